//! Envoy v3 resources → weft's raw configuration structs.
//!
//! The conversion only maps shapes; value checks (ranges, regexes, durations, header names) are left
//! to weft-config's validation so that YAML and xDS accept exactly the same things. What cannot be
//! expressed in weft at all (TLS, scoped routes, unknown non-optional filters, ...) is refused here
//! with the Envoy field path, so the NACK tells the control plane which field to fix.

// Deprecated Envoy fields (header matcher shorthands, `append`, `http2_protocol_options`,
// `dns_refresh_rate`) are still sent by real control planes, so they are read on purpose.
#![allow(deprecated)]

use std::collections::BTreeMap;
use std::time::Duration;
use weft_config::authz::{RawAuthorization, RawRbac};
use weft_config::model::{Codec, Direction, HeaderAppendAction, RoutePriority, SubsetFallback, UpstreamProtocol};
use weft_config::raw::*;
use weft_config::tls::ForwardClientCert;
use weft_config::ConfigError;
use weft_xds_api::pb::envoy::config::cluster::v3 as cl;
use weft_xds_api::pb::envoy::config::core::v3 as core;
use weft_xds_api::pb::envoy::config::endpoint::v3 as ep;
use weft_xds_api::pb::envoy::config::listener::v3 as ls;
use weft_xds_api::pb::envoy::config::route::v3 as rt;
use weft_xds_api::pb::envoy::extensions::filters::http::fault::v3 as fault;
use weft_xds_api::pb::envoy::extensions::filters::http::jwt_authn::v3 as jwt_authn;
use weft_xds_api::pb::envoy::extensions::filters::http::local_ratelimit::v3 as lrl;
use weft_xds_api::pb::envoy::extensions::filters::http::ratelimit::v3 as rl;
use weft_xds_api::pb::envoy::extensions::filters::http::rbac::v3 as http_rbac;
use weft_xds_api::pb::envoy::extensions::filters::network::connection_limit::v3 as connection_limit;
use weft_xds_api::pb::envoy::extensions::filters::network::dubbo_proxy::v3 as dubbo_proxy;
use weft_xds_api::pb::envoy::extensions::filters::network::generic_proxy::v3 as generic_proxy;
use weft_xds_api::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
use weft_xds_api::pb::envoy::extensions::filters::network::rbac::v3 as net_rbac;
use weft_xds_api::pb::envoy::extensions::filters::network::tcp_proxy::v3 as tcp;
use weft_xds_api::pb::envoy::r#type::matcher::v3 as matcher;
use weft_xds_api::pb::envoy::r#type::v3 as typ;
use weft_xds_api::pb::google::protobuf::{Any, Duration as PbDuration};
use weft_xds_api::type_url;

pub const HCM_NAME: &str = "envoy.filters.network.http_connection_manager";
pub const TCP_PROXY_NAME: &str = "envoy.filters.network.tcp_proxy";
pub const ROUTER_NAME: &str = "envoy.filters.http.router";
pub const FAULT_NAME: &str = "envoy.filters.http.fault";
pub const LOCAL_RATE_LIMIT_NAME: &str = "envoy.filters.http.local_ratelimit";
pub const CONNECTION_LIMIT_NAME: &str = "envoy.filters.network.connection_limit";
pub const CONNECTION_LIMIT_URL: &str =
    "type.googleapis.com/envoy.extensions.filters.network.connection_limit.v3.ConnectionLimit";
pub const RATE_LIMIT_NAME: &str = "envoy.filters.http.ratelimit";
pub const RATE_LIMIT_URL: &str = "type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit";
const FILTER_CONFIG_URL: &str = "type.googleapis.com/envoy.config.route.v3.FilterConfig";
const UPSTREAM_HTTP_OPTIONS: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

/// A listener in weft form. HTTP filter chains that use RDS have `route_config: None` until the
/// assembler fills in the named route configuration.
#[derive(Clone, Debug)]
pub struct XListener {
    pub raw: RawListener,
    /// Per filter chain: the RDS route configuration it waits for.
    pub rds: Vec<Option<String>>,
    /// The SDS secrets its TLS block waits for (certificates by index into `tls.certificates`).
    pub secrets: Vec<crate::tls::SecretRef>,
}

/// A cluster in weft form; EDS clusters get their endpoints from `eds` when assembled.
#[derive(Clone, Debug)]
pub struct XCluster {
    pub raw: RawCluster,
    /// The ClusterLoadAssignment name for an EDS cluster.
    pub eds: Option<String>,
    /// The SDS secrets its TLS block waits for.
    pub secrets: Vec<crate::tls::SecretRef>,
    /// `common_lb_config.locality_weighted_lb_config`: use [`XEndpoints::locality_weighted`].
    pub locality_weighted: bool,
}

/// A protobuf duration, typed (validation bounds it as it bounds YAML's text). Negative parts are
/// refused by the API's own rules (pgv) before conversion; they count as zero here.
pub fn dur(d: &PbDuration) -> RawDuration {
    RawDuration::Value(Duration::new(
        d.seconds.max(0) as u64,
        d.nanos.clamp(0, 999_999_999) as u32,
    ))
}

fn odur(d: &Option<PbDuration>) -> Option<RawDuration> {
    d.as_ref().map(dur)
}

fn fraction(p: &Option<typ::FractionalPercent>, default: f64) -> Option<f64> {
    let Some(p) = p else { return Some(default) };
    let denom = match p.denominator {
        0 => 100.0,
        1 => 10_000.0,
        2 => 1_000_000.0,
        _ => return None,
    };
    Some((f64::from(p.numerator) / denom * 100.0).min(100.0))
}

fn socket_address(errs: &mut ConfigError, path: &str, a: &Option<core::Address>, allow_dns: bool) -> Option<String> {
    let sa = match a.as_ref().and_then(|a| a.address.as_ref()) {
        Some(core::address::Address::SocketAddress(sa)) => sa,
        Some(_) => {
            errs.add(path, "only socket_address is supported");
            return None;
        }
        None => {
            errs.add(path, "is required");
            return None;
        }
    };
    let port = match &sa.port_specifier {
        Some(core::socket_address::PortSpecifier::PortValue(p)) => *p,
        Some(core::socket_address::PortSpecifier::NamedPort(_)) => {
            errs.add(format!("{path}.socket_address.named_port"), "unsupported");
            return None;
        }
        None => 0,
    };
    match sa.address.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V6(ip)) => Some(format!("[{ip}]:{port}")),
        Ok(ip) => Some(format!("{ip}:{port}")),
        Err(_) if allow_dns && !sa.address.is_empty() => Some(format!("{}:{port}", sa.address)),
        Err(_) => {
            errs.add(
                format!("{path}.socket_address.address"),
                format!("\"{}\" is not an IP address", sa.address),
            );
            None
        }
    }
}

fn typed_url(cfg: &Option<Any>) -> &str {
    cfg.as_ref().map(|a| a.type_url.as_str()).unwrap_or("")
}

// ---------------------------------------------------------------------------------------------
// Listener

/// `Ok(None)` for API listeners (proxyless gRPC): they have no socket for weft to bind.
pub fn listener(l: &ls::Listener) -> Result<Option<XListener>, ConfigError> {
    if l.api_listener.is_some() {
        return Ok(None);
    }
    // The API's own validation rules first, as Envoy applies them.
    let invalid = crate::pgv::listener(l);
    if !invalid.is_empty() {
        return Err(invalid);
    }
    let mut errs = ConfigError::default();
    let address = socket_address(&mut errs, "address", &l.address, false);
    if l.default_filter_chain.is_some() {
        errs.add("default_filter_chain", "unsupported");
    }
    // Transparent interception: the original_dst and original_src listener filters are the ones
    // weft has.
    let mut original_dst_filter = false;
    let mut original_src_filter = false;
    let mut original_src_mark = 0;
    for (i, f) in l.listener_filters.iter().enumerate() {
        let any = match &f.config_type {
            Some(ls::listener_filter::ConfigType::TypedConfig(any)) => Some(any),
            _ => None,
        };
        let typed = any.map(|a| a.type_url.as_str()).unwrap_or("");
        if f.name == "envoy.filters.listener.original_dst"
            || typed.ends_with("envoy.extensions.filters.listener.original_dst.v3.OriginalDst")
        {
            original_dst_filter = true;
        } else if f.name == "envoy.filters.listener.original_src" || typed.ends_with(ORIGINAL_SRC_TYPE) {
            original_src_filter = true;
            original_src_mark = original_src(&mut errs, &format!("listener_filters[{i}]"), any);
        } else if f.name == "envoy.filters.listener.tls_inspector"
            || typed.ends_with("envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector")
        {
            // Envoy needs it to match `transport_protocol: tls`; weft peeks at the first bytes of
            // a connection itself (PERMISSIVE) and reads SNI in its own handshake.
        } else {
            errs.add(
                format!("listener_filters[{i}]"),
                "unsupported (weft has envoy.filters.listener.original_dst, original_src and tls_inspector)",
            );
        }
    }
    if l.filter_chains.is_empty() {
        errs.add("filter_chains", "at least one filter chain is required");
    }
    let mut chains = Vec::new();
    let mut rds = Vec::new();
    let mut limits = Vec::new();
    let mut tls = Vec::new();
    for (i, fc) in l.filter_chains.iter().enumerate() {
        let path = format!("filter_chains[{i}]");
        let (chain, r, limit, t) = filter_chain(&mut errs, &path, fc);
        chains.push(chain);
        rds.push(r);
        limits.push(limit);
        tls.push(t);
    }
    let (chains, rds, tls, secrets) = listener_tls(&mut errs, chains, rds, tls);
    // weft limits connections per listener; Envoy's connection_limit filter is per chain, so the
    // chains must agree.
    let max_connections = limits.first().copied().flatten();
    if limits.iter().any(|l| *l != max_connections) {
        errs.add(
            "filter_chains",
            "every filter chain needs the same connection_limit (weft limits connections per listener)",
        );
    }
    if !errs.is_empty() {
        return Err(errs);
    }
    Ok(Some(XListener {
        raw: RawListener {
            name: Some(l.name.clone()),
            address,
            filter_chains: chains,
            max_connections,
            per_connection_buffer_limit_bytes: l.per_connection_buffer_limit_bytes.as_ref().map(|v| u64::from(v.value)),
            // envoy.config.core.v3.TrafficDirection: 0 UNSPECIFIED, 1 INBOUND, 2 OUTBOUND.
            direction: match l.traffic_direction {
                1 => Some(Typed::Value(Direction::Inbound)),
                2 => Some(Typed::Value(Direction::Outbound)),
                _ => None,
            },
            original_destination: (original_dst_filter || l.use_original_dst.as_ref().is_some_and(|b| b.value))
                .then_some(true),
            transparent: l.transparent.as_ref().map(|b| b.value),
            original_source: original_src_filter.then_some(true),
            original_source_mark: (original_src_mark != 0).then_some(original_src_mark),
            bind_to_port: l.bind_to_port.as_ref().map(|b| b.value),
            tls,
            ..Default::default()
        },
        rds,
        secrets,
    }))
}

/// The original source listener filter's message.
const ORIGINAL_SRC_TYPE: &str = "envoy.extensions.filters.listener.original_src.v3.OriginalSrc";

/// Checks an `envoy.filters.listener.original_src` filter's config (`path` is the filter's) and
/// returns its `mark` (0: none). weft connects from the downstream's IP as Envoy does, with
/// `SO_MARK` set to `mark` when given (Istio's TPROXY mode sends 1337 and routes marked replies
/// back by an `ip rule`); it does not bind the peer's port, which Envoy does not implement
/// either, so `bind_port` is refused rather than ignored.
fn original_src(errs: &mut ConfigError, path: &str, any: Option<&Any>) -> u32 {
    use weft_xds_api::pb::envoy::extensions::filters::listener::original_src::v3::OriginalSrc;
    let Some(any) = any else {
        // By name only: the defaults (no port, no mark).
        return 0;
    };
    let url = format!("type.googleapis.com/{ORIGINAL_SRC_TYPE}");
    match weft_xds_api::unpack::<OriginalSrc>(any, &url) {
        Ok(o) => {
            if o.bind_port {
                errs.add(
                    format!("{path}.typed_config.bind_port"),
                    "unsupported (weft connects from the downstream's IP with any port; Envoy does not implement bind_port either)",
                );
            }
            o.mark
        }
        Err(e) => {
            errs.add(format!("{path}.typed_config"), e);
            0
        }
    }
}

/// A filter chain, the route configuration it waits for, and its connection limit.
fn filter_chain(
    errs: &mut ConfigError,
    path: &str,
    fc: &ls::FilterChain,
) -> (RawFilterChain, Option<String>, Option<u64>, ChainTls) {
    let mut out = RawFilterChain {
        name: (!fc.name.is_empty()).then(|| fc.name.clone()),
        ..Default::default()
    };
    let mut tls_in = ChainTls::default();
    if let Some(m) = &fc.filter_chain_match {
        tls_in.transport_protocol = m.transport_protocol.clone();
        tls_in.server_names = m.server_names.clone();
    }
    if let Some(ts) = &fc.transport_socket {
        tls_in.tls = crate::tls::listener_tls(errs, path, ts, &tls_in.server_names, &mut tls_in.secrets);
    }
    if let Some(m) = &fc.filter_chain_match {
        let mp = format!("{path}.filter_chain_match");
        let mut rm = RawFilterChainMatch {
            destination_port: m.destination_port.as_ref().map(|p| u64::from(p.value)),
            ..Default::default()
        };
        for (j, r) in m.source_prefix_ranges.iter().enumerate() {
            if r.address_prefix.is_empty() {
                errs.add(format!("{mp}.source_prefix_ranges[{j}].address_prefix"), "is required");
            }
            let len = r.prefix_len.as_ref().map(|l| l.value).unwrap_or(0);
            rm.source_prefixes.push(format!("{}/{len}", r.address_prefix));
        }
        for (field, set) in [
            ("prefix_ranges", !m.prefix_ranges.is_empty()),
            ("direct_source_prefix_ranges", !m.direct_source_prefix_ranges.is_empty()),
            ("source_ports", !m.source_ports.is_empty()),
            ("application_protocols", !m.application_protocols.is_empty()),
            ("source_type", m.source_type != 0),
        ] {
            if set {
                errs.add(format!("{mp}.{field}"), "unsupported");
            }
        }
        match m.transport_protocol.as_str() {
            "" | "raw_buffer" => {}
            "tls" if tls_in.tls.is_some() => {}
            "tls" => errs.add(
                format!("{mp}.transport_protocol"),
                "\"tls\" without a TLS transport_socket (TLS passthrough) is unsupported: weft terminates TLS",
            ),
            other => errs.add(
                format!("{mp}.transport_protocol"),
                format!("unsupported value {other:?} (tls or raw_buffer)"),
            ),
        }
        if !m.server_names.is_empty() && fc.transport_socket.is_none() {
            errs.add(
                format!("{mp}.server_names"),
                "unsupported without a TLS transport_socket (weft chooses only a certificate by SNI)",
            );
        }
        out.match_ = Some(rm);
    }
    let mut rds = None;
    if fc.filters.is_empty() {
        errs.add(format!("{path}.filters"), "one network filter is required");
    }
    // Before the terminal filter only a connection limit may come (weft's listener max_connections).
    let last = fc.filters.len().saturating_sub(1);
    let mut limit = None;
    let mut network_rbac: Vec<(String, RawRbac)> = Vec::new();
    for (k, f) in fc.filters.iter().enumerate().take(last) {
        let fp = format!("{path}.filters[{k}]");
        let any = match &f.config_type {
            Some(ls::filter::ConfigType::TypedConfig(a)) if a.type_url == CONNECTION_LIMIT_URL => a,
            Some(ls::filter::ConfigType::TypedConfig(a)) if a.type_url == crate::rbac_xds::NETWORK_RBAC_URL => {
                let tp = format!("{fp}.typed_config");
                match weft_xds_api::unpack::<net_rbac::Rbac>(a, crate::rbac_xds::NETWORK_RBAC_URL) {
                    Ok(r) => network_rbac.push((fp.clone(), crate::rbac_xds::network(errs, &tp, &r))),
                    Err(e) => errs.add(&tp, e),
                }
                continue;
            }
            _ => {
                let what = match &f.config_type {
                    Some(ls::filter::ConfigType::TypedConfig(a)) => a.type_url.as_str(),
                    _ => f.name.as_str(),
                };
                errs.add(
                    &fp,
                    format!(
                        "unknown filter \"{what}\" (only {CONNECTION_LIMIT_NAME} and {} may precede the terminal filter)",
                        crate::rbac_xds::NETWORK_RBAC_NAME
                    ),
                );
                continue;
            }
        };
        match weft_xds_api::unpack::<connection_limit::ConnectionLimit>(any, CONNECTION_LIMIT_URL) {
            Ok(c) => {
                if c.delay.as_ref().is_some_and(|d| d.seconds > 0 || d.nanos > 0) {
                    errs.add(format!("{fp}.typed_config.delay"), "unsupported (weft closes at once)");
                }
                match c.max_connections {
                    Some(m) => limit = Some(m.value),
                    None => errs.add(format!("{fp}.typed_config.max_connections"), "is required"),
                }
            }
            Err(e) => errs.add(format!("{fp}.typed_config"), e),
        }
    }
    if let Some(f) = fc.filters.last() {
        let fp = format!("{path}.filters[{last}]");
        let cfg = match &f.config_type {
            Some(ls::filter::ConfigType::TypedConfig(a)) => Some(a.clone()),
            Some(ls::filter::ConfigType::ConfigDiscovery(_)) => {
                errs.add(format!("{fp}.config_discovery"), "unsupported");
                None
            }
            None => None,
        };
        let url = typed_url(&cfg);
        if url == type_url::HCM || (url.is_empty() && f.name == HCM_NAME) {
            let h = match cfg.as_ref() {
                Some(a) => match weft_xds_api::unpack::<hcm::HttpConnectionManager>(a, type_url::HCM) {
                    Ok(h) => h,
                    Err(e) => {
                        errs.add(format!("{fp}.typed_config"), e);
                        return (out, None, limit, tls_in);
                    }
                },
                None => hcm::HttpConnectionManager::default(),
            };
            let (http, r) = http_manager(errs, &format!("{fp}.typed_config"), &h);
            tls_in.forward_client_cert = Some(h.forward_client_cert_details);
            for (rp, _) in &network_rbac {
                errs.add(
                    rp,
                    format!(
                        "{} before an HTTP connection manager is unsupported; use {} in its http_filters",
                        crate::rbac_xds::NETWORK_RBAC_NAME,
                        crate::rbac_xds::HTTP_RBAC_NAME
                    ),
                );
            }
            out.http = Some(http);
            rds = r;
        } else if url == type_url::TCP_PROXY || (url.is_empty() && f.name == TCP_PROXY_NAME) {
            let t = match cfg.as_ref() {
                Some(a) => match weft_xds_api::unpack::<tcp::TcpProxy>(a, type_url::TCP_PROXY) {
                    Ok(t) => t,
                    Err(e) => {
                        errs.add(format!("{fp}.typed_config"), e);
                        return (out, None, limit, tls_in);
                    }
                },
                None => tcp::TcpProxy::default(),
            };
            let mut tp = tcp_proxy(errs, &format!("{fp}.typed_config"), &t);
            if !network_rbac.is_empty() {
                tp.authorization = Some(RawAuthorization {
                    policies: Vec::new(),
                    rbac: network_rbac.into_iter().map(|(_, r)| r).collect(),
                });
            }
            out.tcp_proxy = Some(tp);
        } else if let Some((name, url, needs)) = rpc_filter(url, &f.name) {
            // Envoy's Dubbo proxy or generic proxy: an `rpc` listener.
            let tp = format!("{fp}.typed_config");
            let Some(a) = cfg.as_ref() else {
                errs.add(&tp, format!("is required ({needs})"));
                return (out, None, limit, tls_in);
            };
            let rpc = if name == crate::dubbo_xds::DUBBO_PROXY_NAME {
                weft_xds_api::unpack::<dubbo_proxy::DubboProxy>(a, url)
                    .map(|d| crate::dubbo_xds::dubbo_proxy(errs, &tp, &d))
            } else {
                weft_xds_api::unpack::<generic_proxy::GenericProxy>(a, url)
                    .map(|g| crate::generic_xds::generic_proxy(errs, &tp, &g))
            };
            match rpc {
                Ok(r) => out.rpc = Some(r),
                Err(e) => errs.add(&tp, e),
            }
            for (rp, _) in &network_rbac {
                errs.add(
                    rp,
                    format!(
                        "{} before {name} is unsupported (weft's rpc listeners have no authorization)",
                        crate::rbac_xds::NETWORK_RBAC_NAME,
                    ),
                );
            }
        } else {
            let what = if url.is_empty() { f.name.as_str() } else { url };
            errs.add(&fp, format!("unknown filter \"{what}\" (not optional)"));
        }
    }
    (out, rds, limit, tls_in)
}

/// An RPC network filter by its `typed_config` type (or, untyped, its name): its name, its type
/// URL, and what its config must give.
fn rpc_filter(url: &str, name: &str) -> Option<(&'static str, &'static str, &'static str)> {
    use crate::{dubbo_xds as d, generic_xds as g};
    let filters = [
        (
            d::DUBBO_PROXY_NAME,
            d::DUBBO_PROXY_URL,
            "DubboProxy: stat_prefix and routes",
        ),
        (
            g::GENERIC_PROXY_NAME,
            g::GENERIC_PROXY_URL,
            "GenericProxy: stat_prefix, codec_config, filters and route_config",
        ),
    ];
    filters
        .into_iter()
        .find(|(n, u, _)| url == *u || (url.is_empty() && name == *n))
}

/// What a filter chain says about TLS, for [`listener_tls`] to merge.
#[derive(Default)]
struct ChainTls {
    /// `filter_chain_match.transport_protocol`.
    transport_protocol: String,
    /// `filter_chain_match.server_names`.
    server_names: Vec<String>,
    /// The chain's `DownstreamTlsContext`, converted.
    tls: Option<weft_config::tls::RawListenerTls>,
    /// Its HTTP connection manager's `forward_client_cert_details`.
    forward_client_cert: Option<i32>,
    /// The SDS secrets of its `DownstreamTlsContext` (its certificate is `Cert(0)`).
    secrets: Vec<crate::tls::SecretRef>,
}

/// weft has one `tls` block per listener, certificates chosen by SNI, and PERMISSIVE mode for TLS
/// and plaintext on one port. Envoy expresses the same with filter chains: one chain per server
/// name (`server_names`, each with its certificate), and for PERMISSIVE a `transport_protocol:
/// tls` chain beside a `raw_buffer` twin with the same filters (Istio's inbound listeners). This
/// merges such chains into weft's shape and refuses what it cannot express, naming the chain.
fn listener_tls(
    errs: &mut ConfigError,
    chains: Vec<RawFilterChain>,
    rds: Vec<Option<String>>,
    tls: Vec<ChainTls>,
) -> (
    Vec<RawFilterChain>,
    Vec<Option<String>>,
    Option<weft_config::tls::RawListenerTls>,
    Vec<crate::tls::SecretRef>,
) {
    use crate::tls::{SecretRef, Slot};
    if tls.iter().all(|t| t.tls.is_none()) {
        return (chains, rds, None, Vec::new());
    }
    // The roots are the listener's: every TLS chain must take them from the same secret.
    let ca_of = |t: &ChainTls| t.secrets.iter().find(|r| r.slot == Slot::Ca).map(|r| r.name.clone());
    let mut secrets: Vec<SecretRef> = Vec::new();
    // The chain without its name: twins and per-SNI chains must be equal but for it.
    let key = |c: &RawFilterChain, r: &Option<String>| {
        let mut c = c.clone();
        c.name = None;
        format!("{c:?} {r:?}")
    };
    // The first TLS chain's settings, certificates aside, are the listener's.
    let settings = |t: &weft_config::tls::RawListenerTls| {
        let mut t = t.clone();
        t.certificates.clear();
        format!("{t:?}")
    };
    let first = tls.iter().position(|t| t.tls.is_some()).unwrap_or(0);
    let mut out = tls[first].tls.clone().unwrap_or_default();
    out.certificates.clear();
    let want = settings(&out);
    let fcc = tls[first].forward_client_cert;
    let mut keys: Vec<(String, bool, bool)> = Vec::new(); // (key, has a TLS chain, has a plaintext chain)
    let (mut out_chains, mut out_rds) = (Vec::new(), Vec::new());
    for (i, ((c, r), t)) in chains.iter().zip(&rds).zip(&tls).enumerate() {
        let k = key(c, r);
        let slot = match keys.iter().position(|(x, _, _)| *x == k) {
            Some(s) => s,
            None => {
                keys.push((k, false, false));
                out_chains.push(c.clone());
                out_rds.push(r.clone());
                keys.len() - 1
            }
        };
        match &t.tls {
            Some(ct) => {
                if settings(ct) != want {
                    errs.add(
                        format!("filter_chains[{i}].transport_socket"),
                        format!("differs from filter_chains[{first}]'s TLS settings (weft has one TLS setup per listener; only the certificate may vary, by server name)"),
                    );
                }
                if t.forward_client_cert != fcc {
                    errs.add(
                        format!("filter_chains[{i}]"),
                        format!("forward_client_cert_details differs from filter_chains[{first}]'s (weft has one per TLS listener)"),
                    );
                }
                if ca_of(t) != ca_of(&tls[first]) {
                    errs.add(
                        format!("filter_chains[{i}].transport_socket"),
                        format!("its validation context's SDS secret differs from filter_chains[{first}]'s (weft has one set of client CAs per listener)"),
                    );
                }
                keys[slot].1 = true;
                let base = out.certificates.len();
                for r in &t.secrets {
                    if let Slot::Cert(j) = r.slot {
                        secrets.push(SecretRef {
                            name: r.name.clone(),
                            slot: Slot::Cert(base + j),
                        });
                    }
                }
                out.certificates.extend(ct.certificates.iter().cloned());
            }
            None => {
                if t.transport_protocol == "tls" {
                    // Already refused by the chain's conversion.
                    continue;
                }
                keys[slot].2 = true;
            }
        }
    }
    // Every chain must come with TLS, or every one with a plaintext twin (PERMISSIVE).
    let permissive = keys.iter().any(|k| k.2);
    for (j, (_, has_tls, has_plain)) in keys.iter().enumerate() {
        if !has_tls {
            errs.add(
                "filter_chains",
                format!("filter chain {j} (by position among distinct chains) is plaintext only while others terminate TLS; weft's PERMISSIVE mode needs a transport_protocol: tls chain and a raw_buffer chain with the same filters"),
            );
        } else if permissive && !has_plain {
            errs.add(
                "filter_chains",
                format!("filter chain {j} (by position among distinct chains) terminates TLS without a raw_buffer twin while another chain has one (weft's modes are per listener: STRICT or PERMISSIVE)"),
            );
        }
    }
    out.mode = Some(if permissive { "PERMISSIVE" } else { "STRICT" }.into());
    // envoy HttpConnectionManager.ForwardClientCertDetails: 0 SANITIZE, 1 FORWARD_ONLY,
    // 2 APPEND_FORWARD, 3 SANITIZE_SET, 4 ALWAYS_FORWARD_ONLY.
    out.forward_client_cert = match fcc {
        None | Some(0) => None,
        Some(1) => Some(Typed::Value(ForwardClientCert::ForwardOnly)),
        Some(2) => Some(Typed::Value(ForwardClientCert::AppendForward)),
        Some(3) => Some(Typed::Value(ForwardClientCert::SanitizeSet)),
        Some(4) => Some(Typed::Value(ForwardClientCert::AlwaysForwardOnly)),
        Some(v) => {
            errs.add("filter_chains", format!("unknown forward_client_cert_details {v}"));
            None
        }
    };
    if let Some(name) = ca_of(&tls[first]) {
        secrets.push(SecretRef { name, slot: Slot::Ca });
    }
    (out_chains, out_rds, Some(out), secrets)
}

fn access_logs(
    errs: &mut ConfigError,
    path: &str,
    logs: &[weft_xds_api::pb::envoy::config::accesslog::v3::AccessLog],
    kind: crate::access_log_xds::Kind,
) -> Option<RawAccessLogs> {
    use weft_xds_api::pb::envoy::config::accesslog::v3::access_log::ConfigType;
    let mut out = RawAccessLogs {
        entries: Vec::new(),
        list: true,
    };
    let (mut files, mut grpcs) = (0, 0);
    for (i, l) in logs.iter().enumerate() {
        let p = format!("{path}[{i}]");
        if l.filter.is_some() {
            errs.add(format!("{p}.filter"), "unsupported");
        }
        let Some(ConfigType::TypedConfig(a)) = &l.config_type else {
            errs.add(format!("{p}.typed_config"), "is required");
            continue;
        };
        let Some(raw) = crate::access_log_xds::convert(errs, &format!("{p}.typed_config"), a, kind) else {
            errs.add(
                format!("{p}.typed_config"),
                format!("unknown access logger \"{}\"", a.type_url),
            );
            continue;
        };
        let n = if raw.grpc.is_some() { &mut grpcs } else { &mut files };
        *n += 1;
        if *n > 1 {
            errs.add(
                &p,
                "weft supports one file/stdout access log and one gRPC access log per filter",
            );
            continue;
        }
        out.entries.push(raw);
    }
    (!out.entries.is_empty()).then_some(out)
}

fn tcp_proxy(errs: &mut ConfigError, path: &str, t: &tcp::TcpProxy) -> RawTcpProxy {
    let cluster = match &t.cluster_specifier {
        Some(tcp::tcp_proxy::ClusterSpecifier::Cluster(c)) => Some(c.clone()),
        Some(tcp::tcp_proxy::ClusterSpecifier::WeightedClusters(_)) => {
            errs.add(format!("{path}.weighted_clusters"), "unsupported");
            None
        }
        None => {
            errs.add(format!("{path}.cluster"), "is required");
            None
        }
    };
    RawTcpProxy {
        stat_prefix: (!t.stat_prefix.is_empty()).then(|| t.stat_prefix.clone()),
        cluster,
        idle_timeout: odur(&t.idle_timeout),
        access_log: access_logs(
            errs,
            &format!("{path}.access_log"),
            &t.access_log,
            crate::access_log_xds::Kind::Tcp,
        ),
        tracing: None,
        authorization: None,
    }
}

fn http_manager(errs: &mut ConfigError, path: &str, h: &hcm::HttpConnectionManager) -> (RawHttp, Option<String>) {
    use hcm::http_connection_manager::RouteSpecifier;
    let codec = match h.codec_type {
        0 => Codec::Auto,
        1 => Codec::Http1,
        2 => Codec::Http2,
        v => {
            errs.add(format!("{path}.codec_type"), format!("unsupported value {v}"));
            Codec::Auto
        }
    };
    let mut rds = None;
    let mut route_config = None;
    match &h.route_specifier {
        Some(RouteSpecifier::Rds(r)) => {
            if r.route_config_name.is_empty() {
                errs.add(format!("{path}.rds.route_config_name"), "is required");
            } else {
                rds = Some(r.route_config_name.clone());
            }
        }
        Some(RouteSpecifier::RouteConfig(rc)) => {
            route_config = Some(route_configuration(errs, &format!("{path}.route_config"), rc));
        }
        Some(RouteSpecifier::ScopedRoutes(_)) => errs.add(format!("{path}.scoped_routes"), "unsupported"),
        None => errs.add(path, "one of rds, route_config is required"),
    }
    // Connection idle timeout lives in common_http_protocol_options.
    let idle_timeout = h
        .common_http_protocol_options
        .as_ref()
        .and_then(|o| odur(&o.idle_timeout));
    let mut out = RawHttp {
        stat_prefix: (!h.stat_prefix.is_empty()).then(|| h.stat_prefix.clone()),
        codec: Some(Typed::Value(codec)),
        route_config,
        idle_timeout,
        request_headers_timeout: odur(&h.request_headers_timeout),
        stream_idle_timeout: odur(&h.stream_idle_timeout),
        max_request_headers_kb: h.max_request_headers_kb.as_ref().map(|v| u64::from(v.value)),
        // Envoy's default is false (trust x-forwarded-for); say so explicitly since weft's YAML
        // default is true.
        use_remote_address: Some(h.use_remote_address.as_ref().is_some_and(|v| v.value)),
        xff_num_trusted_hops: Some(u64::from(h.xff_num_trusted_hops)),
        generate_request_id: Some(h.generate_request_id.as_ref().is_none_or(|v| v.value)),
        via: (!h.via.is_empty()).then(|| h.via.clone()),
        server_name: (!h.server_name.is_empty()).then(|| h.server_name.clone()),
        access_log: access_logs(
            errs,
            &format!("{path}.access_log"),
            &h.access_log,
            crate::access_log_xds::Kind::Http,
        ),
        local_rate_limit: None,
        rate_limit_service: None,
        tracing: crate::tracing_xds::from_hcm(errs, &format!("{path}.tracing"), h.tracing.as_ref()),
        authorization: None,
        jwt_authn: None,
    };
    let mut router_at = None;
    for (i, f) in h.http_filters.iter().enumerate() {
        let fp = format!("{path}.http_filters[{i}]");
        if f.disabled {
            continue;
        }
        let cfg = match &f.config_type {
            Some(hcm::http_filter::ConfigType::TypedConfig(a)) => Some(a),
            Some(hcm::http_filter::ConfigType::ConfigDiscovery(_)) => {
                if !f.is_optional {
                    errs.add(format!("{fp}.config_discovery"), "unsupported");
                }
                continue;
            }
            None => None,
        };
        let url = cfg.map(|a| a.type_url.as_str()).unwrap_or("");
        let is = |u: &str, n: &str| url == u || (url.is_empty() && f.name == n);
        if is(type_url::ROUTER, ROUTER_NAME) {
            router_at = Some(i);
        } else if is(type_url::FAULT, FAULT_NAME) {
            // Faults are per route in weft; the listener-level filter only has to be present
            // (weft always runs it when a route configures one). Listener-wide faults are refused.
            if let Some(a) = cfg {
                match weft_xds_api::unpack::<fault::HttpFault>(a, type_url::FAULT) {
                    Ok(fl) if fl.delay.is_some() || fl.abort.is_some() => errs.add(
                        format!("{fp}.typed_config"),
                        "listener-wide faults are unsupported; use typed_per_filter_config on routes",
                    ),
                    Ok(_) => {}
                    Err(e) => errs.add(format!("{fp}.typed_config"), e),
                }
            }
        } else if is(type_url::LOCAL_RATE_LIMIT, LOCAL_RATE_LIMIT_NAME) {
            if let Some(a) = cfg {
                match weft_xds_api::unpack::<lrl::LocalRateLimit>(a, type_url::LOCAL_RATE_LIMIT) {
                    Ok(l) if l.token_bucket.is_some() => {
                        out.local_rate_limit = Some(local_rate_limit(errs, &format!("{fp}.typed_config"), &l, None));
                    }
                    Ok(_) => {}
                    Err(e) => errs.add(format!("{fp}.typed_config"), e),
                }
            }
        } else if is(crate::rbac_xds::HTTP_RBAC_URL, crate::rbac_xds::HTTP_RBAC_NAME) {
            if let Some(a) = cfg {
                match weft_xds_api::unpack::<http_rbac::Rbac>(a, crate::rbac_xds::HTTP_RBAC_URL) {
                    Ok(r) => {
                        let raw = crate::rbac_xds::http(errs, &format!("{fp}.typed_config"), &r);
                        out.authorization.get_or_insert_with(Default::default).rbac.push(raw);
                    }
                    Err(e) => errs.add(format!("{fp}.typed_config"), e),
                }
            }
        } else if is(crate::jwt_xds::JWT_AUTHN_URL, crate::jwt_xds::JWT_AUTHN_NAME) {
            match cfg.map(|a| weft_xds_api::unpack::<jwt_authn::JwtAuthentication>(a, crate::jwt_xds::JWT_AUTHN_URL)) {
                Some(Ok(_)) if out.jwt_authn.is_some() => errs.add(&fp, "a second jwt_authn filter is unsupported"),
                Some(Ok(j)) => out.jwt_authn = Some(crate::jwt_xds::jwt_authn(errs, &format!("{fp}.typed_config"), &j)),
                Some(Err(e)) => errs.add(format!("{fp}.typed_config"), e),
                None => errs.add(format!("{fp}.typed_config"), "is required"),
            }
        } else if is(RATE_LIMIT_URL, RATE_LIMIT_NAME) {
            match cfg.map(|a| weft_xds_api::unpack::<rl::RateLimit>(a, RATE_LIMIT_URL)) {
                Some(Ok(r)) => {
                    out.rate_limit_service = Some(rate_limit_service(errs, &format!("{fp}.typed_config"), &r))
                }
                Some(Err(e)) => errs.add(format!("{fp}.typed_config"), e),
                None => errs.add(format!("{fp}.typed_config"), "is required"),
            }
        } else if !f.is_optional {
            let what = if url.is_empty() { f.name.as_str() } else { url };
            errs.add(&fp, format!("unknown filter \"{what}\" (not optional)"));
        }
    }
    if out.rate_limit_service.is_none() {
        if let Some(rc) = out.route_config.as_mut() {
            strip_rate_limits(rc);
        }
    }
    match router_at {
        None => errs.add(format!("{path}.http_filters"), "the router filter is required"),
        Some(i)
            if i + 1 != h.http_filters.iter().filter(|f| !f.disabled).count()
                && !h.http_filters[i + 1..].iter().all(|f| f.disabled) =>
        {
            errs.add(format!("{path}.http_filters[{i}]"), "the router filter must be last")
        }
        _ => {}
    }
    (out, rds)
}

fn rate_limit_service(errs: &mut ConfigError, path: &str, r: &rl::RateLimit) -> RawRateLimitService {
    use core::grpc_service::TargetSpecifier;
    let cluster = match r
        .rate_limit_service
        .as_ref()
        .and_then(|s| s.grpc_service.as_ref())
        .and_then(|g| g.target_specifier.as_ref())
    {
        Some(TargetSpecifier::EnvoyGrpc(g)) => Some(g.cluster_name.clone()),
        Some(TargetSpecifier::GoogleGrpc(_)) => {
            errs.add(
                format!("{path}.rate_limit_service.grpc_service.google_grpc"),
                "unsupported; use envoy_grpc",
            );
            None
        }
        None => {
            errs.add(
                format!("{path}.rate_limit_service.grpc_service.envoy_grpc"),
                "is required",
            );
            None
        }
    };
    if !r.rate_limits.is_empty() {
        errs.add(format!("{path}.rate_limits"), "unsupported; put rate_limits on routes");
    }
    RawRateLimitService {
        cluster,
        domain: Some(r.domain.clone()),
        // Envoy's default RLS timeout is 20ms.
        timeout: Some(
            r.timeout
                .as_ref()
                .map(dur)
                .unwrap_or(RawDuration::Value(Duration::from_millis(20))),
        ),
        failure_mode_deny: Some(r.failure_mode_deny),
    }
}

/// Route `rate_limits` only matter with a rate limit service on the connection manager; weft
/// refuses them otherwise, Envoy ignores them, so they are dropped.
pub fn strip_rate_limits(rc: &mut RawRouteConfig) {
    for vh in &mut rc.virtual_hosts {
        for r in &mut vh.routes {
            if let Some(a) = r.route.as_mut() {
                a.rate_limits.clear();
            }
        }
    }
}

/// Envoy `RateLimit` descriptors → weft's. An action weft cannot evaluate becomes an empty action,
/// which weft's validation refuses only when a rate limit service would use it.
fn rate_limits(list: &[rt::RateLimit]) -> Vec<RawRateLimit> {
    use rt::rate_limit::action::ActionSpecifier as A;
    list.iter()
        .map(|r| RawRateLimit {
            actions: r
                .actions
                .iter()
                .map(|a| match &a.action_specifier {
                    Some(A::RequestHeaders(h)) => RawRateLimitAction {
                        request_headers: Some(RawRequestHeadersAction {
                            header_name: Some(h.header_name.clone()),
                            descriptor_key: Some(h.descriptor_key.clone()),
                        }),
                        ..Default::default()
                    },
                    Some(A::RemoteAddress(_)) => RawRateLimitAction {
                        remote_address: Some(RawEmpty {}),
                        ..Default::default()
                    },
                    Some(A::GenericKey(g)) => RawRateLimitAction {
                        generic_key: Some(RawGenericKeyAction {
                            descriptor_value: Some(g.descriptor_value.clone()),
                            descriptor_key: (!g.descriptor_key.is_empty()).then(|| g.descriptor_key.clone()),
                        }),
                        ..Default::default()
                    },
                    _ => RawRateLimitAction::default(),
                })
                .collect(),
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Routes

/// Per-filter configs inherited down the tree (route config → virtual host → route).
#[derive(Clone, Default)]
struct PerFilter {
    fault: Option<RawFault>,
    rate_limit: Option<RawLocalRateLimit>,
}

fn per_filter(
    errs: &mut ConfigError,
    path: &str,
    map: &std::collections::HashMap<String, Any>,
    rate_limits: &[rt::RateLimit],
    inherited: &PerFilter,
) -> PerFilter {
    let mut out = inherited.clone();
    let mut keys: Vec<_> = map.keys().collect();
    keys.sort();
    for k in keys {
        let kp = format!("{path}[\"{k}\"]");
        let mut any = map[k].clone();
        let mut optional = false;
        if any.type_url == FILTER_CONFIG_URL {
            match weft_xds_api::unpack::<rt::FilterConfig>(&any, FILTER_CONFIG_URL) {
                Ok(fc) => {
                    if fc.disabled {
                        if k == FAULT_NAME {
                            out.fault = None;
                        } else if k == LOCAL_RATE_LIMIT_NAME {
                            out.rate_limit = None;
                        }
                        continue;
                    }
                    optional = fc.is_optional;
                    match fc.config {
                        Some(c) => any = c,
                        None => continue,
                    }
                }
                Err(e) => {
                    errs.add(&kp, e);
                    continue;
                }
            }
        }
        if any.type_url == type_url::FAULT {
            match weft_xds_api::unpack::<fault::HttpFault>(&any, type_url::FAULT) {
                Ok(f) => {
                    let mut v = crate::pgv::V::default();
                    crate::pgv::http_fault(&mut v, &kp, &f);
                    errs.extend(v.0);
                    out.fault = Some(fault_policy(errs, &kp, &f));
                }
                Err(e) => errs.add(&kp, e),
            }
        } else if any.type_url == type_url::LOCAL_RATE_LIMIT {
            let l = weft_xds_api::unpack::<lrl::LocalRateLimit>(&any, type_url::LOCAL_RATE_LIMIT);
            if let Ok(l) = &l {
                let mut v = crate::pgv::V::default();
                crate::pgv::local_rate_limit(&mut v, &kp, l);
                errs.extend(v.0);
            }
            match l {
                Ok(l) if l.token_bucket.is_none() => out.rate_limit = None,
                Ok(l) => out.rate_limit = Some(local_rate_limit(errs, &kp, &l, Some(rate_limits))),
                Err(e) => errs.add(&kp, e),
            }
        } else if !optional {
            errs.add(&kp, format!("unsupported per-filter config type \"{}\"", any.type_url));
        }
    }
    out
}

fn fault_policy(errs: &mut ConfigError, path: &str, f: &fault::HttpFault) -> RawFault {
    use weft_xds_api::pb::envoy::extensions::filters::common::fault::v3::fault_delay::FaultDelaySecifier;
    let mut out = RawFault::default();
    if let Some(d) = &f.delay {
        let dp = format!("{path}.delay");
        let fixed = match &d.fault_delay_secifier {
            Some(FaultDelaySecifier::FixedDelay(x)) => Some(dur(x)),
            Some(FaultDelaySecifier::HeaderDelay(_)) => {
                errs.add(format!("{dp}.header_delay"), "unsupported");
                None
            }
            None => {
                errs.add(format!("{dp}.fixed_delay"), "is required");
                None
            }
        };
        // Envoy: an absent percentage is 0%.
        let percent = fraction(&d.percentage, 100.0)
            .filter(|_| d.percentage.is_some())
            .or(Some(0.0));
        out.delay = Some(RawFaultDelay { fixed, percent });
    }
    if let Some(a) = &f.abort {
        let ap = format!("{path}.abort");
        let mut abort = RawFaultAbort {
            percent: if a.percentage.is_some() {
                fraction(&a.percentage, 0.0)
            } else {
                Some(0.0)
            },
            ..Default::default()
        };
        match &a.error_type {
            Some(fault::fault_abort::ErrorType::HttpStatus(s)) => abort.http_status = Some(u64::from(*s)),
            Some(fault::fault_abort::ErrorType::GrpcStatus(s)) => abort.grpc_status = Some(u64::from(*s)),
            Some(fault::fault_abort::ErrorType::HeaderAbort(_)) => {
                errs.add(format!("{ap}.header_abort"), "unsupported")
            }
            None => errs.add(format!("{ap}.http_status"), "is required"),
        }
        out.abort = Some(abort);
    }
    for (i, h) in f.headers.iter().enumerate() {
        if let Some(m) = header_matcher(errs, &format!("{path}.headers[{i}]"), h) {
            out.headers.push(m);
        }
    }
    if !f.downstream_nodes.is_empty() {
        errs.add(format!("{path}.downstream_nodes"), "unsupported");
    }
    if !f.upstream_cluster.is_empty() {
        errs.add(format!("{path}.upstream_cluster"), "unsupported");
    }
    out
}

/// A token bucket. weft's `descriptor_header` (one bucket per value of a request header) is the
/// Envoy pattern: the route's `rate_limits[].actions[].request_headers {header_name,
/// descriptor_key}` plus a `descriptors[]` entry with that key and no value.
fn local_rate_limit(
    errs: &mut ConfigError,
    path: &str,
    l: &lrl::LocalRateLimit,
    rate_limits: Option<&[rt::RateLimit]>,
) -> RawLocalRateLimit {
    let Some(tb) = &l.token_bucket else {
        errs.add(format!("{path}.token_bucket"), "is required");
        return RawLocalRateLimit::default();
    };
    let mut out = RawLocalRateLimit {
        max_tokens: Some(u64::from(tb.max_tokens)),
        tokens_per_fill: Some(tb.tokens_per_fill.as_ref().map(|v| u64::from(v.value)).unwrap_or(1)),
        fill_interval: odur(&tb.fill_interval),
        descriptor_header: None,
    };
    if out.fill_interval.is_none() {
        errs.add(format!("{path}.token_bucket.fill_interval"), "is required");
    }
    if !l.descriptors.is_empty() {
        let keys: Vec<&str> = l
            .descriptors
            .iter()
            .flat_map(|d| d.entries.iter())
            .filter(|e| e.value.is_empty())
            .map(|e| e.key.as_str())
            .collect();
        // The route's rate_limits, or the filter's own (Envoy 1.33+).
        let header = rate_limits
            .unwrap_or_default()
            .iter()
            .chain(l.rate_limits.iter())
            .flat_map(|r| r.actions.iter())
            .find_map(|a| match &a.action_specifier {
                Some(rt::rate_limit::action::ActionSpecifier::RequestHeaders(h))
                    if keys.contains(&h.descriptor_key.as_str()) =>
                {
                    Some(h.header_name.clone())
                }
                _ => None,
            });
        match header {
            Some(h) => out.descriptor_header = Some(h),
            None => errs.add(
                format!("{path}.descriptors"),
                "only a per-header descriptor (entry with a key and no value, matched by a route request_headers action) is supported",
            ),
        }
    }
    out
}

fn header_values(errs: &mut ConfigError, path: &str, list: &[core::HeaderValueOption]) -> Vec<RawHeaderValue> {
    let mut out = Vec::new();
    for (i, h) in list.iter().enumerate() {
        let p = format!("{path}[{i}]");
        let Some(hv) = &h.header else {
            errs.add(format!("{p}.header"), "is required");
            continue;
        };
        let value = if hv.raw_value.is_empty() {
            hv.value.clone()
        } else {
            String::from_utf8_lossy(&hv.raw_value).into_owned()
        };
        let action = match (h.append_action, &h.append) {
            // The deprecated `append: false` means overwrite.
            (0, Some(a)) if !a.value => HeaderAppendAction::Overwrite,
            (0, _) => HeaderAppendAction::Append,
            (1, _) => HeaderAppendAction::AddIfAbsent,
            (2, _) => HeaderAppendAction::Overwrite,
            (v, _) => {
                errs.add(format!("{p}.append_action"), format!("unsupported value {v}"));
                HeaderAppendAction::Append
            }
        };
        out.push(RawHeaderValue {
            name: Some(hv.key.clone()),
            value: Some(value),
            action: Some(Typed::Value(action)),
        });
    }
    out
}

/// Escapes regex metacharacters so literal suffix/contains matches can become weft regexes.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if "\\.+*?()|[]{}^$#&-~".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A StringMatcher as (exact, prefix, regex) for weft, which matches whole values with a regex.
fn string_matcher(
    errs: &mut ConfigError,
    path: &str,
    m: &matcher::StringMatcher,
) -> (Option<String>, Option<String>, Option<String>) {
    use matcher::string_matcher::MatchPattern as P;
    let ci = if m.ignore_case { "(?i)" } else { "" };
    match &m.match_pattern {
        Some(P::Exact(s)) if !m.ignore_case => (Some(s.clone()), None, None),
        Some(P::Prefix(s)) if !m.ignore_case => (None, Some(s.clone()), None),
        Some(P::Exact(s)) => (None, None, Some(format!("{ci}{}", escape(s)))),
        Some(P::Prefix(s)) => (None, None, Some(format!("{ci}{}.*", escape(s)))),
        Some(P::Suffix(s)) => (None, None, Some(format!("{ci}.*{}", escape(s)))),
        Some(P::Contains(s)) => (None, None, Some(format!("{ci}.*{}.*", escape(s)))),
        Some(P::SafeRegex(r)) => (None, None, Some(r.regex.clone())),
        Some(P::Custom(_)) => {
            errs.add(format!("{path}.custom"), "unsupported");
            (None, None, None)
        }
        None => {
            errs.add(path, "a match pattern is required");
            (None, None, None)
        }
    }
}

fn header_matcher(errs: &mut ConfigError, path: &str, h: &rt::HeaderMatcher) -> Option<RawHeaderMatcher> {
    use rt::header_matcher::HeaderMatchSpecifier as S;
    let mut out = RawHeaderMatcher {
        name: Some(h.name.clone()),
        invert: Some(h.invert_match),
        ..Default::default()
    };
    match &h.header_match_specifier {
        Some(S::ExactMatch(s)) => out.exact = Some(s.clone()),
        Some(S::PrefixMatch(s)) => out.prefix = Some(s.clone()),
        Some(S::SuffixMatch(s)) => out.regex = Some(format!(".*{}", escape(s))),
        Some(S::ContainsMatch(s)) => out.regex = Some(format!(".*{}.*", escape(s))),
        Some(S::SafeRegexMatch(r)) => out.regex = Some(r.regex.clone()),
        Some(S::PresentMatch(p)) => out.present = Some(*p),
        Some(S::StringMatch(m)) => {
            let (e, p, r) = string_matcher(errs, &format!("{path}.string_match"), m);
            out.exact = e;
            out.prefix = p;
            out.regex = r;
        }
        Some(S::RangeMatch(_)) => {
            errs.add(format!("{path}.range_match"), "unsupported");
            return None;
        }
        // No specifier: Envoy matches on presence.
        None => out.present = Some(true),
    }
    Some(out)
}

pub fn route_configuration(errs: &mut ConfigError, path: &str, rc: &rt::RouteConfiguration) -> RawRouteConfig {
    let pre = if path.is_empty() {
        String::new()
    } else {
        format!("{path}.")
    };
    if rc.vhds.is_some() {
        errs.add(format!("{pre}vhds"), "unsupported");
    }
    let inherited = per_filter(
        errs,
        &format!("{pre}typed_per_filter_config"),
        &rc.typed_per_filter_config,
        &[],
        &PerFilter::default(),
    );
    let mut vhosts = Vec::new();
    for (i, vh) in rc.virtual_hosts.iter().enumerate() {
        vhosts.push(virtual_host(
            errs,
            &format!("{pre}virtual_hosts[{i}]"),
            vh,
            &inherited,
            &rc.request_mirror_policies,
        ));
    }
    RawRouteConfig {
        name: Some(rc.name.clone()),
        virtual_hosts: vhosts,
        request_headers_to_add: header_values(
            errs,
            &format!("{pre}request_headers_to_add"),
            &rc.request_headers_to_add,
        ),
        request_headers_to_remove: rc.request_headers_to_remove.clone(),
        response_headers_to_add: header_values(
            errs,
            &format!("{pre}response_headers_to_add"),
            &rc.response_headers_to_add,
        ),
        response_headers_to_remove: rc.response_headers_to_remove.clone(),
    }
}

fn virtual_host(
    errs: &mut ConfigError,
    path: &str,
    vh: &rt::VirtualHost,
    inherited: &PerFilter,
    mirrors: &[rt::route_action::RequestMirrorPolicy],
) -> RawVirtualHost {
    if vh.require_tls != 0 {
        errs.add(
            format!("{path}.require_tls"),
            "unsupported (weft does not terminate TLS)",
        );
    }
    if vh.matcher.is_some() {
        errs.add(format!("{path}.matcher"), "unsupported");
    }
    let pf = per_filter(
        errs,
        &format!("{path}.typed_per_filter_config"),
        &vh.typed_per_filter_config,
        &vh.rate_limits,
        inherited,
    );
    let mirrors: Vec<_> = if vh.request_mirror_policies.is_empty() {
        mirrors.to_vec()
    } else {
        vh.request_mirror_policies.clone()
    };
    let mut routes = Vec::new();
    for (i, r) in vh.routes.iter().enumerate() {
        if let Some(r) = route(errs, &format!("{path}.routes[{i}]"), r, &pf, &vh.rate_limits, &mirrors) {
            routes.push(r);
        }
    }
    RawVirtualHost {
        name: Some(vh.name.clone()),
        domains: vh.domains.clone(),
        routes,
        request_headers_to_add: header_values(
            errs,
            &format!("{path}.request_headers_to_add"),
            &vh.request_headers_to_add,
        ),
        request_headers_to_remove: vh.request_headers_to_remove.clone(),
        response_headers_to_add: header_values(
            errs,
            &format!("{path}.response_headers_to_add"),
            &vh.response_headers_to_add,
        ),
        response_headers_to_remove: vh.response_headers_to_remove.clone(),
        retry_policy: vh
            .retry_policy
            .as_ref()
            .map(|r| retry_policy(errs, &format!("{path}.retry_policy"), r)),
    }
}

fn route(
    errs: &mut ConfigError,
    path: &str,
    r: &rt::Route,
    inherited: &PerFilter,
    vh_rate_limits: &[rt::RateLimit],
    mirrors: &[rt::route_action::RequestMirrorPolicy],
) -> Option<RawRoute> {
    use rt::route_match::PathSpecifier as PS;
    let mut out = RawRoute {
        name: (!r.name.is_empty()).then(|| r.name.clone()),
        request_headers_to_add: header_values(
            errs,
            &format!("{path}.request_headers_to_add"),
            &r.request_headers_to_add,
        ),
        request_headers_to_remove: r.request_headers_to_remove.clone(),
        response_headers_to_add: header_values(
            errs,
            &format!("{path}.response_headers_to_add"),
            &r.response_headers_to_add,
        ),
        response_headers_to_remove: r.response_headers_to_remove.clone(),
        ..Default::default()
    };
    let mp = format!("{path}.match");
    let Some(m) = &r.r#match else {
        errs.add(&mp, "is required");
        return None;
    };
    let mut rm = RawRouteMatch {
        case_sensitive: m.case_sensitive.as_ref().map(|b| b.value),
        ..Default::default()
    };
    match &m.path_specifier {
        Some(PS::Prefix(p)) => rm.prefix = Some(if p.is_empty() { "/".into() } else { p.clone() }),
        Some(PS::Path(p)) => rm.path = Some(p.clone()),
        Some(PS::SafeRegex(re)) => rm.regex = Some(re.regex.clone()),
        Some(PS::PathSeparatedPrefix(p)) => {
            // "/a" matches "/a" and "/a/..." but not "/ab".
            rm.regex = Some(format!("{}(/.*)?", escape(p.trim_end_matches('/'))));
        }
        Some(_) => errs.add(format!("{mp}.path_specifier"), "unsupported"),
        None => errs.add(&mp, "one of prefix, path, safe_regex is required"),
    }
    if m.runtime_fraction.is_some() {
        errs.add(format!("{mp}.runtime_fraction"), "unsupported");
    }
    if m.grpc.is_some() {
        rm.headers.push(RawHeaderMatcher {
            name: Some("content-type".into()),
            prefix: Some("application/grpc".into()),
            ..Default::default()
        });
    }
    for (i, h) in m.headers.iter().enumerate() {
        let hp = format!("{mp}.headers[{i}]");
        // weft matches methods natively (cheaper than a header matcher): `:method` exact, not inverted.
        if h.name == ":method" && !h.invert_match {
            use rt::header_matcher::HeaderMatchSpecifier as S;
            let exact = match &h.header_match_specifier {
                Some(S::ExactMatch(s)) => Some(s.clone()),
                Some(S::StringMatch(sm)) if !sm.ignore_case => match &sm.match_pattern {
                    Some(matcher::string_matcher::MatchPattern::Exact(s)) => Some(s.clone()),
                    _ => None,
                },
                _ => None,
            };
            if let Some(method) = exact {
                if rm.methods.is_empty() {
                    rm.methods.push(method);
                    continue;
                }
            }
        }
        if let Some(x) = header_matcher(errs, &hp, h) {
            rm.headers.push(x);
        }
    }
    for (i, q) in m.query_parameters.iter().enumerate() {
        use rt::query_parameter_matcher::QueryParameterMatchSpecifier as Q;
        let qp = format!("{mp}.query_parameters[{i}]");
        let mut x = RawQueryMatcher {
            name: Some(q.name.clone()),
            ..Default::default()
        };
        match &q.query_parameter_match_specifier {
            Some(Q::StringMatch(sm)) => {
                let (e, p, r) = string_matcher(errs, &format!("{qp}.string_match"), sm);
                x.exact = e;
                x.regex = r.or(p.map(|p| format!("{}.*", escape(&p))));
            }
            Some(Q::PresentMatch(p)) => x.present = Some(*p),
            None => x.present = Some(true),
        }
        rm.query_parameters.push(x);
    }
    for (field, set) in [
        ("cookies", !m.cookies.is_empty()),
        ("tls_context", m.tls_context.is_some()),
        ("dynamic_metadata", !m.dynamic_metadata.is_empty()),
        ("filter_state", !m.filter_state.is_empty()),
    ] {
        if set {
            errs.add(format!("{mp}.{field}"), "unsupported");
        }
    }
    out.match_ = Some(rm);

    let mut rate_limits = vh_rate_limits.to_vec();
    match &r.action {
        Some(rt::route::Action::Route(a)) => {
            rate_limits.extend(a.rate_limits.iter().cloned());
            let pf = per_filter(
                errs,
                &format!("{path}.typed_per_filter_config"),
                &r.typed_per_filter_config,
                &rate_limits,
                inherited,
            );
            let mut action = route_action(errs, &format!("{path}.route"), a, pf, mirrors);
            // Envoy: the route's own descriptors, plus the virtual host's when the route has none
            // or asks for them with include_vh_rate_limits.
            let include_vh = a.rate_limits.is_empty() || a.include_vh_rate_limits.as_ref().is_some_and(|b| b.value);
            action.rate_limits = self::rate_limits(&a.rate_limits);
            if include_vh {
                action.rate_limits.extend(self::rate_limits(vh_rate_limits));
            }
            out.route = Some(action);
        }
        Some(rt::route::Action::Redirect(rd)) => out.redirect = Some(redirect(errs, &format!("{path}.redirect"), rd)),
        Some(rt::route::Action::DirectResponse(d)) => {
            use core::data_source::Specifier;
            let body = match d.body.as_ref().and_then(|b| b.specifier.as_ref()) {
                None => None,
                Some(Specifier::InlineString(s)) => Some(s.clone()),
                Some(Specifier::InlineBytes(b)) => Some(String::from_utf8_lossy(b).into_owned()),
                Some(_) => {
                    errs.add(
                        format!("{path}.direct_response.body"),
                        "only inline_string / inline_bytes are supported",
                    );
                    None
                }
            };
            out.direct_response = Some(RawDirectResponse {
                status: Some(u64::from(d.status)),
                body,
            });
        }
        Some(_) => errs.add(format!("{path}.action"), "unsupported action"),
        None => errs.add(path, "one of route, redirect, direct_response is required"),
    }
    Some(out)
}

fn redirect(errs: &mut ConfigError, path: &str, rd: &rt::RedirectAction) -> RawRedirect {
    use rt::redirect_action::{PathRewriteSpecifier as P, SchemeRewriteSpecifier as S};
    let status = match rd.response_code {
        0 => 301,
        1 => 302,
        2 => 303,
        3 => 307,
        4 => 308,
        v => {
            errs.add(format!("{path}.response_code"), format!("unsupported value {v}"));
            301
        }
    };
    let mut out = RawRedirect {
        host: (!rd.host_redirect.is_empty()).then(|| rd.host_redirect.clone()),
        port: (rd.port_redirect != 0).then_some(u64::from(rd.port_redirect)),
        status: Some(status),
        strip_query: Some(rd.strip_query),
        ..Default::default()
    };
    match &rd.scheme_rewrite_specifier {
        Some(S::HttpsRedirect(true)) => out.scheme = Some("https".into()),
        Some(S::SchemeRedirect(s)) => out.scheme = Some(s.clone()),
        _ => {}
    }
    match &rd.path_rewrite_specifier {
        Some(P::PathRedirect(p)) => out.path = Some(p.clone()),
        Some(P::PrefixRewrite(p)) => out.prefix_rewrite = Some(p.clone()),
        Some(_) => errs.add(format!("{path}.regex_rewrite"), "unsupported"),
        None => {}
    }
    out
}

fn route_action(
    errs: &mut ConfigError,
    path: &str,
    a: &rt::RouteAction,
    pf: PerFilter,
    mirrors: &[rt::route_action::RequestMirrorPolicy],
) -> RawRouteAction {
    use rt::route_action::{ClusterSpecifier as C, HostRewriteSpecifier as H};
    let mut out = RawRouteAction {
        // Envoy's default route timeout is 15s; 0 disables it.
        timeout: Some(
            a.timeout
                .as_ref()
                .map(dur)
                .unwrap_or(RawDuration::Value(Duration::from_secs(15))),
        ),
        // The newer field wins over the deprecated one, as in Envoy.
        #[allow(deprecated)]
        max_grpc_timeout: a
            .max_stream_duration
            .as_ref()
            .and_then(|m| m.grpc_timeout_header_max.as_ref())
            .or(a.max_grpc_timeout.as_ref())
            .map(dur),
        prefix_rewrite: (!a.prefix_rewrite.is_empty()).then(|| a.prefix_rewrite.clone()),
        fault: pf.fault,
        local_rate_limit: pf.rate_limit,
        priority: match a.priority {
            0 => None,
            1 => Some(Typed::Value(RoutePriority::High)),
            v => {
                errs.add(format!("{path}.priority"), format!("unsupported value {v}"));
                None
            }
        },
        ..Default::default()
    };
    match &a.cluster_specifier {
        Some(C::Cluster(c)) => out.cluster = Some(c.clone()),
        Some(C::WeightedClusters(w)) => {
            for (i, c) in w.clusters.iter().enumerate() {
                if !c.cluster_header.is_empty() {
                    errs.add(
                        format!("{path}.weighted_clusters.clusters[{i}].cluster_header"),
                        "unsupported",
                    );
                }
                out.weighted_clusters.push(RawWeightedCluster {
                    name: Some(c.name.clone()),
                    weight: Some(c.weight.as_ref().map(|v| u64::from(v.value)).unwrap_or(0)),
                });
            }
        }
        Some(_) => errs.add(
            format!("{path}.cluster_specifier"),
            "only cluster and weighted_clusters are supported",
        ),
        None => errs.add(path, "one of cluster, weighted_clusters is required"),
    }
    match &a.host_rewrite_specifier {
        Some(H::HostRewriteLiteral(h)) => out.host_rewrite = Some(h.clone()),
        Some(H::AutoHostRewrite(b)) => out.auto_host_rewrite = Some(b.value),
        Some(_) => errs.add(
            format!("{path}.host_rewrite_specifier"),
            "only host_rewrite_literal and auto_host_rewrite are supported",
        ),
        None => {}
    }
    if a.regex_rewrite.is_some() {
        errs.add(format!("{path}.regex_rewrite"), "unsupported");
    }
    if let Some(r) = &a.retry_policy {
        out.retry_policy = Some(retry_policy(errs, &format!("{path}.retry_policy"), r));
    }
    for (i, h) in a.hash_policy.iter().enumerate() {
        use rt::route_action::hash_policy::PolicySpecifier as P;
        let hp = format!("{path}.hash_policy[{i}]");
        let mut x = RawHashPolicy {
            terminal: Some(h.terminal),
            ..Default::default()
        };
        match &h.policy_specifier {
            Some(P::Header(hd)) => x.header = Some(hd.header_name.clone()),
            Some(P::Cookie(c)) => {
                // ttl, path and attributes go to the validator, which refuses path / attributes
                // without a ttl (nothing is generated) instead of dropping them.
                x.cookie = Some(weft_config::raw::RawCookie {
                    name: Some(c.name.clone()),
                    ttl: odur(&c.ttl),
                    path: (!c.path.is_empty()).then(|| c.path.clone()),
                    attributes: c
                        .attributes
                        .iter()
                        .map(|a| weft_config::raw::RawCookieAttribute {
                            name: Some(a.name.clone()),
                            value: (!a.value.is_empty()).then(|| a.value.clone()),
                        })
                        .collect(),
                })
            }
            Some(P::ConnectionProperties(c)) if c.source_ip => x.source_ip = Some(true),
            Some(P::QueryParameter(q)) => x.query_parameter = Some(q.name.clone()),
            Some(_) => {
                errs.add(
                    &hp,
                    "only header, cookie, connection_properties.source_ip and query_parameter are supported",
                );
                continue;
            }
            None => {
                errs.add(&hp, "a policy is required");
                continue;
            }
        }
        out.hash_policy.push(x);
    }
    let mirrors = if a.request_mirror_policies.is_empty() {
        mirrors
    } else {
        &a.request_mirror_policies[..]
    };
    for (i, m) in mirrors.iter().enumerate() {
        let mp = format!("{path}.request_mirror_policies[{i}]");
        if !m.cluster_header.is_empty() {
            errs.add(format!("{mp}.cluster_header"), "unsupported");
        }
        let percent = fraction(&m.runtime_fraction.as_ref().and_then(|f| f.default_value), 100.0);
        if percent.is_none() {
            errs.add(
                format!("{mp}.runtime_fraction.default_value.denominator"),
                "unknown value",
            );
        }
        out.request_mirror_policies.push(RawMirrorPolicy {
            cluster: Some(m.cluster.clone()),
            percent,
        });
    }
    out
}

fn retry_policy(errs: &mut ConfigError, path: &str, r: &rt::RetryPolicy) -> RawRetryPolicy {
    if !r.retriable_headers.is_empty() {
        errs.add(format!("{path}.retriable_headers"), "unsupported");
    }
    RawRetryPolicy {
        retry_on: r
            .retry_on
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                if s == "refused-stream" {
                    "reset".to_string()
                } else {
                    s.to_string()
                }
            })
            .collect(),
        // Envoy's default is one retry.
        num_retries: Some(r.num_retries.as_ref().map(|v| u64::from(v.value)).unwrap_or(1)),
        per_try_timeout: odur(&r.per_try_timeout),
        retriable_status_codes: r.retriable_status_codes.iter().map(|c| u64::from(*c)).collect(),
        retry_back_off: r.retry_back_off.as_ref().map(|b| RawBackoff {
            base_interval: odur(&b.base_interval),
            max_interval: odur(&b.max_interval),
        }),
    }
}

// ---------------------------------------------------------------------------------------------
// Clusters

pub fn cluster(c: &cl::Cluster, node_has_locality: bool) -> Result<XCluster, ConfigError> {
    use cl::cluster::{ClusterDiscoveryType, DiscoveryType, LbConfig};
    let invalid = crate::pgv::cluster(c);
    if !invalid.is_empty() {
        return Err(invalid);
    }
    let mut errs = ConfigError::default();
    let mut secrets = Vec::new();
    let mut out = RawCluster {
        name: Some(c.name.clone()),
        // Envoy's default connect timeout is 5s.
        connect_timeout: Some(
            c.connect_timeout
                .as_ref()
                .map(dur)
                .unwrap_or(RawDuration::Value(Duration::from_secs(5))),
        ),
        dns_refresh_rate: odur(&c.dns_refresh_rate),
        per_connection_buffer_limit_bytes: c.per_connection_buffer_limit_bytes.as_ref().map(|v| u64::from(v.value)),
        ..Default::default()
    };
    let ty = match &c.cluster_discovery_type {
        Some(ClusterDiscoveryType::Type(t)) => *t,
        Some(ClusterDiscoveryType::ClusterType(_)) => {
            errs.add("cluster_type", "custom cluster types are unsupported");
            0
        }
        None => 0,
    };
    let mut eds = None;
    let mut inline_endpoints = true;
    match DiscoveryType::try_from(ty) {
        Ok(DiscoveryType::Static) => out.type_ = Some(Typed::Value(ClusterType::Static)),
        // LOGICAL_DNS differs only in using the first address; strict DNS is a superset.
        Ok(DiscoveryType::StrictDns | DiscoveryType::LogicalDns) => {
            out.type_ = Some(Typed::Value(ClusterType::StrictDns))
        }
        Ok(DiscoveryType::OriginalDst) => {
            out.type_ = Some(Typed::Value(ClusterType::OriginalDst));
            inline_endpoints = false;
        }
        Ok(DiscoveryType::Eds) => {
            out.type_ = Some(Typed::Value(ClusterType::Static));
            let name = c
                .eds_cluster_config
                .as_ref()
                .map(|e| e.service_name.clone())
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| c.name.clone());
            eds = Some(name);
            inline_endpoints = false;
        }
        Err(_) => errs.add("type", format!("unsupported value {ty}")),
    }
    let lb = match c.lb_policy {
        0 => Some(LbKind::RoundRobin),
        1 => Some(LbKind::LeastRequest),
        2 => Some(LbKind::RingHash),
        3 => Some(LbKind::Random),
        5 => Some(LbKind::Maglev),
        // ORIGINAL_DST clusters must use CLUSTER_PROVIDED in Envoy.
        6 if out.type_ == Some(Typed::Value(ClusterType::OriginalDst)) => None,
        v => {
            errs.add("lb_policy", format!("unsupported value {v}"));
            None
        }
    };
    out.lb_policy = lb.map(Typed::Value);
    match &c.lb_config {
        Some(LbConfig::RingHashLbConfig(r)) => {
            out.ring_hash = Some(RawRingHash {
                minimum_ring_size: r.minimum_ring_size.as_ref().map(|v| v.value),
                maximum_ring_size: r.maximum_ring_size.as_ref().map(|v| v.value),
            })
        }
        Some(LbConfig::MaglevLbConfig(m)) => {
            out.maglev = Some(RawMaglev {
                table_size: m.table_size.as_ref().map(|v| v.value),
            })
        }
        Some(LbConfig::LeastRequestLbConfig(l)) => {
            out.least_request = Some(RawLeastRequest {
                choice_count: l.choice_count.as_ref().map(|v| u64::from(v.value)),
            })
        }
        _ => {}
    }
    if let Some(ts) = &c.transport_socket {
        out.tls = crate::tls::cluster_tls_with_secrets(&mut errs, ts, &mut secrets);
    }
    out.tls_matches = transport_socket_matches(&mut errs, c);
    if c.load_balancing_policy.is_some() {
        errs.add("load_balancing_policy", "unsupported; use lb_policy");
    }
    // Upstream protocol: the typed HttpProtocolOptions, or the deprecated http2_protocol_options.
    if c.http2_protocol_options.is_some() {
        out.protocol = Some(Typed::Value(UpstreamProtocol::Http2));
    }
    // Upstream connection idle timeout → weft's pool idle_timeout.
    let mut pool_idle = c
        .common_http_protocol_options
        .as_ref()
        .and_then(|o| odur(&o.idle_timeout));
    if let Some(any) = c.typed_extension_protocol_options.get(UPSTREAM_HTTP_OPTIONS) {
        use weft_xds_api::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::{
            explicit_http_config::ProtocolConfig, UpstreamProtocolOptions,
        };
        use weft_xds_api::pb::envoy::extensions::upstreams::http::v3::HttpProtocolOptions;
        let p = format!("typed_extension_protocol_options[\"{UPSTREAM_HTTP_OPTIONS}\"]");
        match weft_xds_api::unpack::<HttpProtocolOptions>(any, type_url::HTTP_PROTOCOL_OPTIONS) {
            Ok(o) => {
                if let Some(t) = o
                    .common_http_protocol_options
                    .as_ref()
                    .and_then(|o| odur(&o.idle_timeout))
                {
                    pool_idle = Some(t);
                }
                match o.upstream_protocol_options {
                    Some(UpstreamProtocolOptions::ExplicitHttpConfig(e)) => match e.protocol_config {
                        Some(ProtocolConfig::Http2ProtocolOptions(_)) => {
                            out.protocol = Some(Typed::Value(UpstreamProtocol::Http2))
                        }
                        Some(ProtocolConfig::HttpProtocolOptions(_)) | None => {
                            out.protocol = Some(Typed::Value(UpstreamProtocol::Http1))
                        }
                        Some(ProtocolConfig::Http3ProtocolOptions(_)) => errs.add(
                            format!("{p}.explicit_http_config.http3_protocol_options"),
                            "unsupported",
                        ),
                    },
                    Some(_) => errs.add(&p, "only explicit_http_config is supported"),
                    None => {}
                }
            }
            Err(e) => errs.add(&p, e),
        }
    }
    if let Some(t) = pool_idle {
        out.pool = Some(RawPool {
            max_idle_per_endpoint: None,
            idle_timeout: Some(t),
        });
    }
    if let Some(cb) = &c.circuit_breakers {
        // DEFAULT and HIGH priorities (routes with priority HIGH count against the latter).
        let v = |x: &Option<weft_xds_api::pb::google::protobuf::UInt32Value>| x.as_ref().map(|v| u64::from(v.value));
        let thresholds = |t: &cl::circuit_breakers::Thresholds| RawCircuitBreakers {
            max_connections: v(&t.max_connections),
            max_pending_requests: v(&t.max_pending_requests),
            max_requests: v(&t.max_requests),
            max_retries: v(&t.max_retries),
            high_priority: None,
        };
        let high = cb
            .thresholds
            .iter()
            .find(|t| t.priority == 1)
            .map(|t| Box::new(thresholds(t)));
        if cb.thresholds.iter().any(|t| t.priority > 1) {
            errs.add(
                "circuit_breakers.thresholds",
                "unsupported priority (DEFAULT and HIGH only)",
            );
        }
        let default = cb.thresholds.iter().find(|t| t.priority == 0);
        if default.is_some() || high.is_some() {
            out.circuit_breakers = Some(RawCircuitBreakers {
                high_priority: high,
                ..default.map(thresholds).unwrap_or_default()
            });
        }
        if let Some(b) = default.and_then(|t| t.retry_budget.as_ref()) {
            out.retry_budget = Some(RawRetryBudget {
                budget_percent: b.budget_percent.as_ref().map(|p| p.value),
                min_retry_concurrency: v(&b.min_retry_concurrency),
            });
        }
    }
    if let Some(o) = &c.outlier_detection {
        let v = |x: &Option<weft_xds_api::pb::google::protobuf::UInt32Value>| x.as_ref().map(|v| u64::from(v.value));
        out.outlier_detection = Some(RawOutlierDetection {
            consecutive_5xx: v(&o.consecutive_5xx),
            consecutive_gateway_failure: v(&o.consecutive_gateway_failure),
            consecutive_local_origin_failure: v(&o.consecutive_local_origin_failure),
            interval: odur(&o.interval),
            base_ejection_time: odur(&o.base_ejection_time),
            max_ejection_time: odur(&o.max_ejection_time),
            max_ejection_percent: v(&o.max_ejection_percent),
            success_rate_minimum_hosts: v(&o.success_rate_minimum_hosts),
            success_rate_request_volume: v(&o.success_rate_request_volume),
            success_rate_stdev_factor: v(&o.success_rate_stdev_factor),
            failure_percentage_threshold: v(&o.failure_percentage_threshold),
            failure_percentage_minimum_hosts: v(&o.failure_percentage_minimum_hosts),
            failure_percentage_request_volume: v(&o.failure_percentage_request_volume),
        });
    }
    for (i, h) in c.health_checks.iter().enumerate() {
        if let Some(x) = health_check(&mut errs, &format!("health_checks[{i}]"), h) {
            out.health_checks.push(x);
        }
    }
    let mut locality_weighted = false;
    if let Some(cfg) = &c.common_lb_config {
        out.healthy_panic_threshold = cfg.healthy_panic_threshold.as_ref().map(|p| p.value);
        use cl::cluster::common_lb_config::LocalityConfigSpecifier as L;
        match &cfg.locality_config_specifier {
            // Zone-aware routing needs to know where this proxy runs; without a node locality it
            // is a no-op in Envoy too, so it is dropped rather than refused.
            Some(L::ZoneAwareLbConfig(_)) => out.locality_aware = Some(node_has_locality),
            Some(L::LocalityWeightedLbConfig(_)) => locality_weighted = true,
            None => {}
        }
    }
    if let Some(s) = &c.lb_subset_config {
        let fallback = match s.fallback_policy {
            0 => SubsetFallback::NoFallback,
            1 => SubsetFallback::AnyEndpoint,
            2 => SubsetFallback::DefaultSubset,
            v => {
                errs.add("lb_subset_config.fallback_policy", format!("unsupported value {v}"));
                SubsetFallback::AnyEndpoint
            }
        };
        out.subsets = Some(RawSubsets {
            fallback_policy: Some(Typed::Value(fallback)),
            default_subset: s.default_subset.as_ref().map(struct_strings).unwrap_or_default(),
            tag_header: None,
            tag_label: None,
        });
    }
    out.service = istio_service(c);
    if inline_endpoints {
        if let Some(la) = &c.load_assignment {
            let dns = out.type_ == Some(Typed::Value(ClusterType::StrictDns));
            out.endpoints = endpoints(&mut errs, "load_assignment", la, dns, locality_weighted);
        }
    }
    if !errs.is_empty() {
        return Err(errs);
    }
    Ok(XCluster {
        raw: out,
        eds,
        secrets,
        locality_weighted,
    })
}

/// Istio's cluster metadata, `filter_metadata.istio.services[0]` (`host`, `name`, `namespace`):
/// the service the cluster reaches, for the Istio-standard metrics' `destination_service*` labels.
/// Absent or not in that shape: None (the labels then use the cluster's name); its values are
/// checked like a YAML cluster's `service`.
fn istio_service(c: &cl::Cluster) -> Option<RawClusterService> {
    use weft_xds_api::pb::google::protobuf::value::Kind;
    let istio = c.metadata.as_ref()?.filter_metadata.get("istio")?;
    let Some(Kind::ListValue(list)) = istio.fields.get("services")?.kind.as_ref() else {
        return None;
    };
    let Some(Kind::StructValue(first)) = list.values.first()?.kind.as_ref() else {
        return None;
    };
    let mut f = struct_strings(first);
    Some(RawClusterService {
        host: f.remove("host"),
        name: f.remove("name"),
        namespace: f.remove("namespace"),
    })
}

/// Which metadata key transport socket matching reads (an endpoint's, a locality's).
const TRANSPORT_SOCKET_MATCH: &str = "envoy.transport_socket_match";

/// `Cluster.transport_socket_matches` (Istio's `tlsMode-istio` / `tlsMode-disabled` entries).
/// A match's values must be strings, booleans or numbers (compared as text); a match's TLS takes
/// the mesh identity (SDS `default`/`ROOTCA`) or files, not secrets over ADS; a missing
/// `transport_socket` is plaintext. `transport_socket_matcher` is refused.
fn transport_socket_matches(errs: &mut ConfigError, c: &cl::Cluster) -> Vec<RawTlsMatch> {
    if c.transport_socket_matcher.is_some() {
        errs.add(
            "transport_socket_matcher",
            "unsupported (weft selects by transport_socket_matches on endpoint and locality metadata)",
        );
    }
    let mut out = Vec::new();
    for (j, m) in c.transport_socket_matches.iter().enumerate() {
        let mp = format!("transport_socket_matches[{j}]");
        let mut match_ = BTreeMap::new();
        for (k, v) in m.r#match.iter().flat_map(|s| s.fields.iter()) {
            let Some(v) = value_text(v) else {
                errs.add(
                    format!("{mp}.match.{k}"),
                    "unsupported value (weft matches strings, booleans and numbers)",
                );
                continue;
            };
            match_.insert(k.clone(), v);
        }
        let tls = match &m.transport_socket {
            None => None,
            Some(ts) => {
                let (mut e, mut secrets) = (ConfigError::default(), Vec::new());
                let tls = crate::tls::cluster_tls_with_secrets(&mut e, ts, &mut secrets);
                errs.extend_under(&mp, e);
                if !secrets.is_empty() {
                    errs.add(
                        format!("{mp}.transport_socket"),
                        "SDS secrets over ADS are followed on the cluster's transport_socket only (a match takes the mesh identity, SDS default/ROOTCA, or files)",
                    );
                }
                tls
            }
        };
        out.push(RawTlsMatch {
            name: (!m.name.is_empty()).then(|| m.name.clone()),
            match_,
            tls,
        });
    }
    out
}

/// A metadata value as text: strings, booleans and numbers; None for lists, structs and nulls.
pub(crate) fn value_text(v: &weft_xds_api::pb::google::protobuf::Value) -> Option<String> {
    use weft_xds_api::pb::google::protobuf::value::Kind;
    match v.kind.as_ref()? {
        Kind::StringValue(s) => Some(s.clone()),
        Kind::BoolValue(b) => Some(b.to_string()),
        Kind::NumberValue(n) => Some(n.to_string()),
        _ => None,
    }
}

fn struct_strings(s: &weft_xds_api::pb::google::protobuf::Struct) -> BTreeMap<String, String> {
    s.fields
        .iter()
        .filter_map(|(k, v)| Some((k.clone(), value_text(v)?)))
        .collect()
}

/// The text values of `metadata`'s `filter_metadata[key]` (empty when absent).
fn filter_metadata_strings(metadata: Option<&core::Metadata>, key: &str) -> BTreeMap<String, String> {
    metadata
        .and_then(|m| m.filter_metadata.get(key))
        .map(struct_strings)
        .unwrap_or_default()
}

fn health_check(errs: &mut ConfigError, path: &str, h: &core::HealthCheck) -> Option<RawHealthCheck> {
    use core::health_check::HealthChecker as K;
    let mut out = RawHealthCheck {
        interval: odur(&h.interval),
        interval_jitter: odur(&h.interval_jitter),
        timeout: odur(&h.timeout),
        healthy_threshold: h.healthy_threshold.as_ref().map(|v| u64::from(v.value)),
        unhealthy_threshold: h.unhealthy_threshold.as_ref().map(|v| u64::from(v.value)),
        ..Default::default()
    };
    match &h.health_checker {
        Some(K::HttpHealthCheck(x)) => {
            out.http = Some(RawHttpHealthCheck {
                path: Some(x.path.clone()),
                host: (!x.host.is_empty()).then(|| x.host.clone()),
                // Envoy ranges are half-open [start, end); weft's are inclusive.
                expected_statuses: x
                    .expected_statuses
                    .iter()
                    .map(|r| format!("{}-{}", r.start, r.end - 1))
                    .collect(),
            })
        }
        Some(K::TcpHealthCheck(x)) => {
            if x.send.is_some() || !x.receive.is_empty() {
                errs.add(
                    format!("{path}.tcp_health_check"),
                    "send/receive payloads are unsupported",
                );
            }
            out.tcp = Some(RawTcpHealthCheck {});
        }
        Some(K::GrpcHealthCheck(x)) => {
            out.grpc = Some(RawGrpcHealthCheck {
                service_name: Some(x.service_name.clone()),
                authority: (!x.authority.is_empty()).then(|| x.authority.clone()),
            })
        }
        Some(K::CustomHealthCheck(_)) => {
            errs.add(format!("{path}.custom_health_check"), "unsupported");
            return None;
        }
        None => {
            errs.add(
                path,
                "one of http_health_check, tcp_health_check, grpc_health_check is required",
            );
            return None;
        }
    }
    Some(out)
}

/// Endpoints of a ClusterLoadAssignment. Unhealthy, draining and timed-out endpoints are left out,
/// as Envoy never routes to them.
///
/// `locality_weighted` (the cluster has `locality_weighted_lb_config`): weft balances over endpoint
/// weights only, so each endpoint's weight becomes its locality's share of the priority level
/// times its share within the locality (scaled to integers), which gives Envoy's traffic split.
pub fn endpoints(
    errs: &mut ConfigError,
    path: &str,
    la: &ep::ClusterLoadAssignment,
    allow_dns: bool,
    locality_weighted: bool,
) -> Vec<RawEndpoint> {
    let pre = if path.is_empty() {
        String::new()
    } else {
        format!("{path}.")
    };
    let mut out = Vec::new();
    // Per endpoint: (locality index, locality weight).
    let mut groups = Vec::new();
    for (i, l) in la.endpoints.iter().enumerate() {
        let lp = format!("{pre}endpoints[{i}]");
        let loc = l.locality.clone().unwrap_or_default();
        if l.load_balancing_weight.as_ref().is_some_and(|w| w.value == 0) {
            // A zero-weight locality takes no traffic in Envoy.
            continue;
        }
        let locality_tls_match = filter_metadata_strings(l.metadata.as_ref(), TRANSPORT_SOCKET_MATCH);
        for (j, e) in l.lb_endpoints.iter().enumerate() {
            let ep_path = format!("{lp}.lb_endpoints[{j}]");
            if matches!(e.health_status, 2..=4) {
                continue;
            }
            let addr = match &e.host_identifier {
                Some(ep::lb_endpoint::HostIdentifier::Endpoint(x)) => {
                    socket_address(errs, &format!("{ep_path}.endpoint.address"), &x.address, allow_dns)
                }
                Some(ep::lb_endpoint::HostIdentifier::EndpointName(_)) => {
                    errs.add(format!("{ep_path}.endpoint_name"), "unsupported");
                    None
                }
                None => {
                    errs.add(format!("{ep_path}.endpoint"), "is required");
                    None
                }
            };
            let labels = filter_metadata_strings(e.metadata.as_ref(), "envoy.lb");
            let tls_match = filter_metadata_strings(e.metadata.as_ref(), TRANSPORT_SOCKET_MATCH);
            out.push(RawEndpoint {
                address: addr,
                weight: Some(
                    e.load_balancing_weight
                        .as_ref()
                        .map(|w| u64::from(w.value))
                        .unwrap_or(1),
                ),
                priority: Some(u64::from(l.priority)),
                region: (!loc.region.is_empty()).then(|| loc.region.clone()),
                zone: (!loc.zone.is_empty()).then(|| loc.zone.clone()),
                sub_zone: (!loc.sub_zone.is_empty()).then(|| loc.sub_zone.clone()),
                labels,
                tls_match,
                locality_tls_match: locality_tls_match.clone(),
            });
            groups.push((i, l.load_balancing_weight.as_ref().map(|w| w.value).unwrap_or(1)));
        }
    }
    if locality_weighted {
        weigh_localities(&mut out, &groups);
    }
    out
}

/// Scale of the integer weights that emulate locality weighting (weft's weights go to 1,000,000).
const LOCALITY_SCALE: f64 = 10_000.0;

fn weigh_localities(eps: &mut [RawEndpoint], groups: &[(usize, u32)]) {
    use std::collections::HashMap;
    // Per priority: the sum of its localities' weights; per locality: the sum of endpoint weights.
    let mut lw_sum: HashMap<u64, f64> = HashMap::new();
    let mut seen: HashMap<usize, ()> = HashMap::new();
    let mut ew_sum: HashMap<usize, f64> = HashMap::new();
    for (e, (idx, lw)) in eps.iter().zip(groups) {
        let prio = e.priority.unwrap_or(0);
        if seen.insert(*idx, ()).is_none() {
            *lw_sum.entry(prio).or_default() += f64::from(*lw);
        }
        *ew_sum.entry(*idx).or_default() += e.weight.unwrap_or(1) as f64;
    }
    for (e, (idx, lw)) in eps.iter_mut().zip(groups) {
        let prio = e.priority.unwrap_or(0);
        let share = f64::from(*lw) / lw_sum[&prio] * e.weight.unwrap_or(1) as f64 / ew_sum[idx];
        e.weight = Some(((share * LOCALITY_SCALE).round() as u64).max(1));
    }
}

/// A ClusterLoadAssignment in weft form, for clusters with and without locality weighting.
#[derive(Clone, Debug, Default)]
pub struct XEndpoints {
    pub plain: Vec<RawEndpoint>,
    pub locality_weighted: Vec<RawEndpoint>,
}

pub fn load_assignment(la: &ep::ClusterLoadAssignment) -> Result<XEndpoints, ConfigError> {
    let invalid = crate::pgv::load_assignment(la);
    if !invalid.is_empty() {
        return Err(invalid);
    }
    let mut errs = ConfigError::default();
    let plain = endpoints(&mut errs, "", la, false, false);
    let locality_weighted = endpoints(&mut ConfigError::default(), "", la, false, true);
    errs.or(XEndpoints {
        plain,
        locality_weighted,
    })
}

pub fn route_config(rc: &rt::RouteConfiguration) -> Result<RawRouteConfig, ConfigError> {
    let invalid = crate::pgv::route_configuration(rc);
    if !invalid.is_empty() {
        return Err(invalid);
    }
    let mut errs = ConfigError::default();
    let out = route_configuration(&mut errs, "", rc);
    errs.or(out)
}
