//! Istio's `networking.istio.io/v1` VirtualService and DestinationRule, read as-is (so an Istio user
//! can migrate without rewriting policy) and turned into the registry-file entries they mean: a
//! VirtualService into one `routes` entry per host, a DestinationRule into one `destinations`
//! entry. Both are then validated exactly like those entries in a registry file
//! ([`parse_fragment`]).
//!
//! Only the fields listed in docs/control.md are mapped. Anything else weft cannot honour is never
//! dropped silently: an HTTP route using it is skipped (the others are kept), `tcp`/`tls` routes
//! are skipped, a VirtualService bound only to gateways other than `mesh` is skipped whole, and a
//! DestinationRule using an unsupported traffic policy is skipped whole — each with its reason in
//! the registry's skipped entries (`/debug/registry`, logs). A malformed object never stops the
//! watch: the specs are kept as raw JSON and decoded here, field by field.

use crate::model::{parse_fragment, Fragment};
use kube::CustomResource;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

/// A VirtualService's spec, kept as the raw JSON (decoded by [`virtual_service`]).
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[kube(
    group = "networking.istio.io",
    version = "v1",
    kind = "VirtualService",
    plural = "virtualservices",
    namespaced,
    schema = "disabled",
    derive = "PartialEq"
)]
pub struct VirtualServiceSpec {
    #[serde(flatten)]
    pub raw: Map<String, Value>,
}

/// A DestinationRule's spec, kept as the raw JSON (decoded by [`destination_rule`]).
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[kube(
    group = "networking.istio.io",
    version = "v1",
    kind = "DestinationRule",
    plural = "destinationrules",
    namespaced,
    schema = "disabled",
    derive = "PartialEq"
)]
pub struct DestinationRuleSpec {
    #[serde(flatten)]
    pub raw: Map<String, Value>,
}

type Other = BTreeMap<String, Value>;

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct VsSpec {
    #[serde(default)]
    hosts: Vec<String>,
    #[serde(default)]
    gateways: Vec<String>,
    #[serde(default)]
    http: Vec<Value>,
    #[serde(default)]
    tcp: Vec<Value>,
    #[serde(default)]
    tls: Vec<Value>,
    /// Visibility: weft has none (every service is visible); ignored.
    #[serde(default, rename = "exportTo")]
    _export_to: Value,
    #[serde(flatten)]
    other: Other,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct VsHttp {
    name: Option<String>,
    #[serde(default, rename = "match")]
    matches: Vec<VsMatch>,
    #[serde(default)]
    route: Vec<VsRouteDest>,
    timeout: Option<String>,
    retries: Option<VsRetries>,
    fault: Option<VsFault>,
    mirror: Option<VsDest>,
    mirror_percentage: Option<Percent>,
    mirror_percent: Option<f64>,
    rewrite: Option<VsRewrite>,
    headers: Option<VsHeaders>,
    #[serde(flatten)]
    other: Other,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct VsRewrite {
    uri: Option<String>,
    authority: Option<String>,
    #[serde(flatten)]
    other: Other,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct VsHeaders {
    request: Option<VsHeaderOp>,
    response: Option<VsHeaderOp>,
    #[serde(flatten)]
    other: Other,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct VsHeaderOp {
    #[serde(default)]
    set: BTreeMap<String, String>,
    #[serde(default)]
    add: BTreeMap<String, String>,
    #[serde(default)]
    remove: Vec<String>,
    #[serde(flatten)]
    other: Other,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct VsMatch {
    #[serde(default, rename = "name")]
    _name: Option<String>,
    uri: Option<StrMatch>,
    #[serde(default)]
    headers: BTreeMap<String, StrMatch>,
    #[serde(default)]
    query_params: BTreeMap<String, StrMatch>,
    method: Option<StrMatch>,
    #[serde(flatten)]
    other: Other,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct StrMatch {
    exact: Option<String>,
    prefix: Option<String>,
    regex: Option<String>,
    #[serde(flatten)]
    other: Other,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct VsRouteDest {
    destination: VsDest,
    weight: Option<i64>,
    #[serde(flatten)]
    other: Other,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct VsDest {
    host: String,
    subset: Option<String>,
    port: Option<PortSel>,
    #[serde(flatten)]
    other: Other,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PortSel {
    number: Option<u32>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct VsRetries {
    attempts: Option<u32>,
    per_try_timeout: Option<String>,
    retry_on: Option<String>,
    #[serde(flatten)]
    other: Other,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct VsFault {
    delay: Option<VsDelay>,
    abort: Option<VsAbort>,
    #[serde(flatten)]
    other: Other,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct VsDelay {
    fixed_delay: Option<String>,
    percentage: Option<Percent>,
    percent: Option<f64>,
    #[serde(flatten)]
    other: Other,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct VsAbort {
    http_status: Option<u32>,
    percentage: Option<Percent>,
    #[serde(flatten)]
    other: Other,
}

#[derive(Deserialize)]
struct Percent {
    value: f64,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct DrSpec {
    host: String,
    traffic_policy: Option<TrafficPolicy>,
    #[serde(default)]
    subsets: Vec<DrSubset>,
    #[serde(default, rename = "exportTo")]
    _export_to: Value,
    #[serde(flatten)]
    other: Other,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct TrafficPolicy {
    load_balancer: Option<LoadBalancer>,
    connection_pool: Option<ConnectionPool>,
    outlier_detection: Option<OutlierDetection>,
    #[serde(flatten)]
    other: Other,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct LoadBalancer {
    simple: Option<String>,
    consistent_hash: Option<ConsistentHash>,
    #[serde(flatten)]
    other: Other,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ConsistentHash {
    http_header_name: Option<String>,
    use_source_ip: Option<bool>,
    http_cookie: Option<HttpCookie>,
    #[serde(flatten)]
    other: Other,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct HttpCookie {
    name: Option<String>,
    path: Option<String>,
    ttl: Option<String>,
    #[serde(flatten)]
    other: Other,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ConnectionPool {
    tcp: Option<TcpPool>,
    http: Option<HttpPool>,
    #[serde(flatten)]
    other: Other,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TcpPool {
    max_connections: Option<u32>,
    connect_timeout: Option<String>,
    #[serde(flatten)]
    other: Other,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct HttpPool {
    http1_max_pending_requests: Option<u32>,
    http2_max_requests: Option<u32>,
    max_retries: Option<u32>,
    #[serde(flatten)]
    other: Other,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct OutlierDetection {
    consecutive_5xx_errors: Option<u32>,
    /// Deprecated in Istio, same meaning.
    consecutive_errors: Option<u32>,
    interval: Option<String>,
    base_ejection_time: Option<String>,
    max_ejection_percent: Option<u32>,
    #[serde(flatten)]
    other: Other,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DrSubset {
    name: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    traffic_policy: Option<Value>,
    #[serde(flatten)]
    other: Other,
}

/// What the conversion needs to know about the cluster.
pub trait Lookup {
    /// The weft service for `port` of Service `namespace/name` (`name.namespace` for its first
    /// port, `name.namespace.PORT_NAME` for the others); None when unknown.
    fn service_for_port(&self, namespace: &str, name: &str, port: u32) -> Option<String>;
    /// The consistent hash (`{"header": H}` or `{"source_ip": true}`) a DestinationRule sets for
    /// this weft service.
    fn hash_for(&self, service: &str) -> Option<Value>;
}

/// The weft service an Istio host names, relative to the resource's namespace: `reviews`,
/// `reviews.shop`, `reviews.shop.svc`, `reviews.shop.svc.cluster.local` → `reviews.shop`.
pub fn resolve_host(host: &str, namespace: &str) -> Result<(String, String), String> {
    if host.contains('*') {
        return Err(format!("host \"{host}\": wildcard hosts are not supported"));
    }
    let parts: Vec<&str> = host.split('.').collect();
    let ok = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    let (name, ns) = match parts.as_slice() {
        [n] => (*n, namespace),
        [n, ns] | [n, ns, "svc"] => (*n, *ns),
        [n, ns, "svc", rest @ ..] if !rest.is_empty() => (*n, *ns),
        _ => {
            return Err(format!(
                "host \"{host}\" is not a Kubernetes Service (NAME, NAME.NAMESPACE or NAME.NAMESPACE.svc.DOMAIN); external hosts are not supported"
            ))
        }
    };
    if !ok(name) || !ok(ns) {
        return Err(format!("host \"{host}\" is not a valid Service name"));
    }
    Ok((ns.to_string(), name.to_string()))
}

fn weft_service(l: &dyn Lookup, d: &VsDest, namespace: &str) -> Result<String, String> {
    if let Some(k) = d.other.keys().next() {
        return Err(format!("destination.{k} is not supported"));
    }
    let (ns, name) = resolve_host(&d.host, namespace)?;
    match d.port.as_ref().and_then(|p| p.number) {
        Some(p) => l
            .service_for_port(&ns, &name, p)
            .ok_or_else(|| format!("destination {}: Service {ns}/{name} has no port {p}", d.host)),
        None => Ok(format!("{name}.{ns}")),
    }
}

fn unsupported(other: &Other, at: &str) -> Result<(), String> {
    match other.keys().next() {
        Some(k) => Err(format!("{at}{k} is not supported")),
        None => Ok(()),
    }
}

fn string_match(m: &StrMatch, at: &str) -> Result<Value, String> {
    unsupported(&m.other, &format!("{at}."))?;
    match (&m.exact, &m.prefix, &m.regex) {
        (Some(v), None, None) => Ok(json!({ "exact": v })),
        (None, Some(v), None) => Ok(json!({ "prefix": v })),
        (None, None, Some(v)) => Ok(json!({ "regex": v })),
        _ => Err(format!("{at}: give exactly one of exact, prefix, regex")),
    }
}

/// One Istio HTTP route → one registry-file `http` entry (as JSON).
fn http_route(l: &dyn Lookup, h: VsHttp, namespace: &str) -> Result<Value, String> {
    unsupported(&h.other, "")?;
    let mut out = Map::new();
    if let Some(n) = &h.name {
        out.insert("name".into(), json!(n));
    }
    let mut matches = Vec::new();
    for (i, m) in h.matches.iter().enumerate() {
        let at = format!("match[{i}].");
        unsupported(&m.other, &at)?;
        let mut o = Map::new();
        if let Some(u) = &m.uri {
            let (k, v) = match string_match(u, &format!("{at}uri"))? {
                Value::Object(x) => x.into_iter().next().unwrap_or_default(),
                _ => unreachable!(),
            };
            let key = match k.as_str() {
                "exact" => "path",
                other => other,
            };
            o.insert(key.into(), v);
        }
        if let Some(meth) = &m.method {
            match (&meth.exact, &meth.prefix, &meth.regex, meth.other.is_empty()) {
                (Some(v), None, None, true) => {
                    o.insert("method".into(), json!(v));
                }
                _ => return Err(format!("{at}method: only exact is supported")),
            }
        }
        if !m.headers.is_empty() {
            let mut hs = Map::new();
            for (name, sm) in &m.headers {
                hs.insert(name.clone(), string_match(sm, &format!("{at}headers.{name}"))?);
            }
            o.insert("headers".into(), Value::Object(hs));
        }
        if !m.query_params.is_empty() {
            let mut qs = Map::new();
            for (name, sm) in &m.query_params {
                qs.insert(name.clone(), string_match(sm, &format!("{at}queryParams.{name}"))?);
            }
            o.insert("query_params".into(), Value::Object(qs));
        }
        matches.push(Value::Object(o));
    }
    if !matches.is_empty() {
        out.insert("match".into(), Value::Array(matches));
    }
    if h.route.is_empty() {
        return Err("no route destinations (redirect, directResponse and delegate are not supported)".into());
    }
    let many = h.route.len() > 1;
    let mut route = Vec::new();
    let mut services = Vec::new();
    for (i, r) in h.route.iter().enumerate() {
        unsupported(&r.other, &format!("route[{i}]."))?;
        let svc = weft_service(l, &r.destination, namespace).map_err(|e| format!("route[{i}]: {e}"))?;
        let mut d = Map::new();
        d.insert("destination".into(), json!(svc));
        if let Some(s) = &r.destination.subset {
            d.insert("subset".into(), json!(s));
        }
        if many {
            let w = r.weight.unwrap_or(0);
            let w = u32::try_from(w).map_err(|_| format!("route[{i}].weight: {w} is not 0..100"))?;
            d.insert("weight".into(), json!(w));
        }
        services.push(svc);
        route.push(Value::Object(d));
    }
    out.insert("route".into(), Value::Array(route));
    if let Some(t) = h.timeout {
        out.insert("timeout".into(), json!(t));
    }
    if let Some(r) = h.retries {
        unsupported(&r.other, "retries.")?;
        let mut o = Map::new();
        o.insert("attempts".into(), json!(r.attempts.unwrap_or(0)));
        if let Some(p) = r.per_try_timeout {
            o.insert("per_try_timeout".into(), json!(p));
        }
        if let Some(on) = r.retry_on {
            let list: Vec<&str> = on.split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
            o.insert("retry_on".into(), json!(list));
        }
        out.insert("retries".into(), Value::Object(o));
    }
    if let Some(f) = h.fault {
        unsupported(&f.other, "fault.")?;
        let mut o = Map::new();
        if let Some(d) = f.delay {
            unsupported(&d.other, "fault.delay.")?;
            let fixed = d.fixed_delay.ok_or("fault.delay: only fixedDelay is supported")?;
            let pc = d.percentage.map(|p| p.value).or(d.percent).unwrap_or(100.0);
            o.insert("delay".into(), json!({ "fixed": fixed, "percent": pc }));
        }
        if let Some(a) = f.abort {
            unsupported(&a.other, "fault.abort.")?;
            let code = a.http_status.ok_or("fault.abort: only httpStatus is supported")?;
            let pc = a.percentage.map(|p| p.value).unwrap_or(100.0);
            o.insert("abort".into(), json!({ "http_status": code, "percent": pc }));
        }
        out.insert("fault".into(), Value::Object(o));
    }
    if let Some(m) = h.mirror {
        let svc = weft_service(l, &m, namespace).map_err(|e| format!("mirror: {e}"))?;
        let pc = h
            .mirror_percentage
            .map(|p| p.value)
            .or(h.mirror_percent)
            .unwrap_or(100.0);
        let mut o = Map::new();
        o.insert("destination".into(), json!(svc));
        if let Some(s) = m.subset {
            o.insert("subset".into(), json!(s));
        }
        o.insert("percent".into(), json!(pc));
        out.insert("mirror".into(), Value::Object(o));
    }
    if let Some(r) = h.rewrite {
        unsupported(&r.other, "rewrite.")?;
        let mut o = Map::new();
        if let Some(u) = r.uri {
            o.insert("uri".into(), json!(u));
        }
        if let Some(a) = r.authority {
            o.insert("authority".into(), json!(a));
        }
        out.insert("rewrite".into(), Value::Object(o));
    }
    if let Some(hs) = h.headers {
        unsupported(&hs.other, "headers.")?;
        let mut o = Map::new();
        for (side, op) in [("request", hs.request), ("response", hs.response)] {
            let Some(op) = op else { continue };
            unsupported(&op.other, &format!("headers.{side}."))?;
            // HTTP header names are case-insensitive; weft writes them in lower case.
            let lower = |m: BTreeMap<String, String>| -> Map<String, Value> {
                m.into_iter().map(|(k, v)| (k.to_ascii_lowercase(), json!(v))).collect()
            };
            let remove: Vec<String> = op.remove.iter().map(|k| k.to_ascii_lowercase()).collect();
            o.insert(
                side.into(),
                json!({ "set": lower(op.set), "add": lower(op.add), "remove": remove }),
            );
        }
        out.insert("headers".into(), Value::Object(o));
    }
    // A DestinationRule's consistent hash applies to the routes to its host.
    let first = &services[0];
    if services.iter().all(|s| s == first) {
        if let Some(hash) = l.hash_for(first) {
            out.insert("hash".into(), hash);
        }
    }
    Ok(Value::Object(out))
}

/// Validates one registry-file document; errors joined.
fn validate(what: &str, doc: &Value) -> Result<Fragment, String> {
    parse_fragment(what, &doc.to_string()).map_err(|e| e.join("; "))
}

/// What one Istio resource becomes: its fragment (None: nothing served) and its skipped parts
/// (`VirtualService ns/name http[1]` → why).
pub type Converted = (Option<Fragment>, BTreeMap<String, String>);

/// A VirtualService → one `routes` entry per host. `what` is `VirtualService ns/name`.
pub fn virtual_service(l: &dyn Lookup, what: &str, namespace: &str, spec: &VirtualServiceSpec) -> Converted {
    let mut skipped = BTreeMap::new();
    let vs: VsSpec = match serde_json::from_value(Value::Object(spec.raw.clone())) {
        Ok(v) => v,
        Err(e) => {
            skipped.insert(what.to_string(), format!("malformed spec: {e}"));
            return (None, skipped);
        }
    };
    if let Some(k) = vs.other.keys().next() {
        let why = match k.as_str() {
            "workloadSelector" => "workloadSelector is not supported (routes apply to every client)".to_string(),
            k => format!("spec.{k} is not supported"),
        };
        skipped.insert(what.to_string(), why);
        return (None, skipped);
    }
    if !vs.gateways.is_empty() && !vs.gateways.iter().any(|g| g == "mesh") {
        skipped.insert(
            what.to_string(),
            format!(
                "gateways {:?}: only the mesh (sidecars) is served; ingress gateways are not supported",
                vs.gateways
            ),
        );
        return (None, skipped);
    }
    if !vs.tcp.is_empty() {
        skipped.insert(format!("{what} tcp"), "tcp routes are not supported: skipped".into());
    }
    if !vs.tls.is_empty() {
        skipped.insert(format!("{what} tls"), "tls routes are not supported: skipped".into());
    }
    let mut routes = Vec::new();
    for (i, h) in vs.http.into_iter().enumerate() {
        let part = format!("{what} http[{i}]");
        let r = serde_json::from_value::<VsHttp>(h)
            .map_err(|e| format!("malformed: {e}"))
            .and_then(|h| http_route(l, h, namespace))
            .and_then(|r| {
                // Each route alone, so one bad route skips only itself.
                let doc = json!({ "routes": [{ "service": "x", "http": [r.clone()] }] });
                validate(&part, &doc).map(|_| r)
            });
        match r {
            Ok(r) => routes.push(r),
            Err(why) => {
                skipped.insert(part, format!("{why}: route skipped"));
            }
        }
    }
    let mut entries = Vec::new();
    for h in &vs.hosts {
        match resolve_host(h, namespace) {
            Ok((ns, name)) => entries.push(json!({ "service": format!("{name}.{ns}"), "http": routes })),
            Err(why) => {
                skipped.insert(format!("{what} host {h}"), why);
            }
        }
    }
    if entries.is_empty() {
        if vs.hosts.is_empty() {
            skipped.insert(what.to_string(), "spec.hosts is empty".into());
        }
        return (None, skipped);
    }
    if routes.is_empty() {
        skipped
            .entry(what.to_string())
            .or_insert_with(|| "no HTTP route weft can serve".into());
        return (None, skipped);
    }
    match validate(what, &json!({ "routes": entries })) {
        Ok(f) => (Some(f), skipped),
        Err(why) => {
            skipped.insert(what.to_string(), why);
            (None, skipped)
        }
    }
}

/// The consistent hash of a DestinationRule, as a registry-file route `hash` (None: not set or
/// malformed).
pub fn destination_rule_hash(spec: &DestinationRuleSpec) -> Option<Value> {
    let ch = spec
        .raw
        .get("trafficPolicy")?
        .get("loadBalancer")?
        .get("consistentHash")?;
    if let Some(h) = ch.get("httpHeaderName").and_then(Value::as_str) {
        return Some(json!({ "header": h }));
    }
    if let Some(c) = ch.get("httpCookie") {
        let mut cookie = Map::new();
        cookie.insert("name".into(), json!(c.get("name")?.as_str()?));
        for k in ["ttl", "path"] {
            if let Some(v) = c.get(k).and_then(Value::as_str) {
                cookie.insert(k.into(), json!(v));
            }
        }
        return Some(json!({ "cookie": cookie }));
    }
    (ch.get("useSourceIp") == Some(&Value::Bool(true))).then(|| json!({ "source_ip": true }))
}

/// Checks a DestinationRule's `consistentHash.httpCookie` (the routes to its host get it as their
/// `hash.cookie`, validated again there).
fn http_cookie(c: &HttpCookie) -> Result<(), String> {
    const AT: &str = "trafficPolicy.loadBalancer.consistentHash.httpCookie";
    unsupported(&c.other, &format!("{AT}."))?;
    if c.name.as_deref().is_none_or(str::is_empty) {
        return Err(format!("{AT}.name is required"));
    }
    if let Some(t) = &c.ttl {
        weft_config::duration::parse(t).map_err(|e| format!("{AT}.ttl: {e}"))?;
    } else if c.path.is_some() {
        return Err(format!("{AT}.path has no effect without ttl (no cookie is generated)"));
    }
    Ok(())
}

fn traffic_policy(t: TrafficPolicy, out: &mut Map<String, Value>) -> Result<(), String> {
    if let Some(k) = t.other.keys().next() {
        return Err(match k.as_str() {
            "tls" => "trafficPolicy.tls is not supported (weft's mesh mTLS is configured on weft control)".into(),
            k => format!("trafficPolicy.{k} is not supported"),
        });
    }
    if let Some(lb) = t.load_balancer {
        unsupported(&lb.other, "trafficPolicy.loadBalancer.")?;
        let name = match (lb.simple.as_deref(), lb.consistent_hash) {
            (Some(s), None) => match s {
                "ROUND_ROBIN" | "UNSPECIFIED" => "round_robin",
                "LEAST_REQUEST" | "LEAST_CONN" => "least_request",
                "RANDOM" => "random",
                other => return Err(format!("trafficPolicy.loadBalancer.simple {other} is not supported")),
            },
            (None, Some(ch)) => {
                unsupported(&ch.other, "trafficPolicy.loadBalancer.consistentHash.")?;
                match (ch.http_header_name, ch.use_source_ip, ch.http_cookie) {
                    (Some(_), None | Some(false), None) | (None, Some(true), None) => "ring_hash",
                    (None, None | Some(false), Some(c)) => {
                        http_cookie(&c)?;
                        "ring_hash"
                    }
                    _ => {
                        return Err(
                            "trafficPolicy.loadBalancer.consistentHash: give one of httpHeaderName, httpCookie, useSourceIp"
                                .into(),
                        )
                    }
                }
            }
            _ => return Err("trafficPolicy.loadBalancer: give simple or consistentHash".into()),
        };
        out.insert("lb".into(), json!(name));
    }
    if let Some(cp) = t.connection_pool {
        unsupported(&cp.other, "trafficPolicy.connectionPool.")?;
        let mut l = Map::new();
        if let Some(tcp) = cp.tcp {
            unsupported(&tcp.other, "trafficPolicy.connectionPool.tcp.")?;
            if let Some(m) = tcp.max_connections {
                l.insert("max_connections".into(), json!(m));
            }
            if let Some(c) = tcp.connect_timeout {
                out.insert("connect_timeout".into(), json!(c));
            }
        }
        if let Some(h) = cp.http {
            unsupported(&h.other, "trafficPolicy.connectionPool.http.")?;
            if let Some(m) = h.http1_max_pending_requests {
                l.insert("max_pending_requests".into(), json!(m));
            }
            if let Some(m) = h.http2_max_requests {
                l.insert("max_requests".into(), json!(m));
            }
            if let Some(m) = h.max_retries {
                l.insert("max_retries".into(), json!(m));
            }
        }
        if !l.is_empty() {
            out.insert("connection_limits".into(), Value::Object(l));
        }
    }
    if let Some(od) = t.outlier_detection {
        unsupported(&od.other, "trafficPolicy.outlierDetection.")?;
        let mut o = Map::new();
        if let Some(c) = od.consecutive_5xx_errors.or(od.consecutive_errors) {
            o.insert("consecutive_5xx".into(), json!(c));
        }
        if let Some(i) = od.interval {
            o.insert("interval".into(), json!(i));
        }
        if let Some(b) = od.base_ejection_time {
            o.insert("base_ejection_time".into(), json!(b));
        }
        if let Some(m) = od.max_ejection_percent {
            o.insert("max_ejection_percent".into(), json!(m));
        }
        out.insert("outlier_detection".into(), Value::Object(o));
    }
    Ok(())
}

/// A DestinationRule → one `destinations` entry. `what` is `DestinationRule ns/name`.
pub fn destination_rule(what: &str, namespace: &str, spec: &DestinationRuleSpec) -> Converted {
    let mut skipped = BTreeMap::new();
    let r = (|| {
        let dr: DrSpec =
            serde_json::from_value(Value::Object(spec.raw.clone())).map_err(|e| format!("malformed spec: {e}"))?;
        if let Some(k) = dr.other.keys().next() {
            return Err(format!("spec.{k} is not supported"));
        }
        let (ns, name) = resolve_host(&dr.host, namespace)?;
        let mut out = Map::new();
        out.insert("service".into(), json!(format!("{name}.{ns}")));
        if let Some(t) = dr.traffic_policy {
            traffic_policy(t, &mut out)?;
        }
        let mut subsets = Vec::new();
        for (i, s) in dr.subsets.into_iter().enumerate() {
            unsupported(&s.other, &format!("subsets[{i}]."))?;
            if s.traffic_policy.is_some() {
                return Err(format!(
                    "subsets[{i}].trafficPolicy is not supported (per-subset policy); put it on the rule"
                ));
            }
            subsets.push(json!({ "name": s.name, "labels": s.labels }));
        }
        if !subsets.is_empty() {
            out.insert("subsets".into(), Value::Array(subsets));
        }
        validate(what, &json!({ "destinations": [out] }))
    })();
    match r {
        Ok(f) => (Some(f), skipped),
        Err(why) => {
            skipped.insert(what.to_string(), format!("{why}: rule skipped"));
            (None, skipped)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct L;
    impl Lookup for L {
        fn service_for_port(&self, ns: &str, name: &str, port: u32) -> Option<String> {
            (port == 9080).then(|| format!("{name}.{ns}"))
        }
        fn hash_for(&self, _: &str) -> Option<Value> {
            None
        }
    }

    fn spec(v: Value) -> VirtualServiceSpec {
        VirtualServiceSpec {
            raw: v.as_object().unwrap().clone(),
        }
    }

    #[test]
    fn hosts_resolve_relative_to_the_namespace() {
        assert_eq!(
            resolve_host("reviews", "shop").unwrap(),
            ("shop".into(), "reviews".into())
        );
        assert_eq!(
            resolve_host("reviews.a", "shop").unwrap(),
            ("a".into(), "reviews".into())
        );
        assert_eq!(
            resolve_host("reviews.a.svc.cluster.local", "shop").unwrap(),
            ("a".into(), "reviews".into())
        );
        assert!(resolve_host("*.example.com", "shop").is_err());
        assert!(resolve_host("www.example.com", "shop").is_err());
    }

    #[test]
    fn a_virtual_service_maps_and_unsupported_routes_are_skipped() {
        let vs = spec(json!({
            "hosts": ["reviews"],
            "http": [
                {"match": [{"headers": {"end-user": {"exact": "jason"}}, "uri": {"prefix": "/api"}}],
                 "route": [{"destination": {"host": "reviews", "subset": "v2", "port": {"number": 9080}}}]},
                {"match": [{"uri": {"prefix": "/old"}, "queryParams": {"lang": {"exact": "en"}}}],
                 "rewrite": {"uri": "/new", "authority": "reviews.internal"},
                 "headers": {"request": {"set": {"X-Lane": "blue"}, "add": {"x-tag": "a"}, "remove": ["X-Debug"]},
                             "response": {"set": {"x-served-by": "weft"}}},
                 "route": [{"destination": {"host": "reviews"}}]},
                {"route": [{"destination": {"host": "reviews", "subset": "v1"}, "weight": 90},
                           {"destination": {"host": "reviews.shop.svc.cluster.local", "subset": "v2"}, "weight": 10}],
                 "timeout": "2s", "retries": {"attempts": 3, "perTryTimeout": "500ms", "retryOn": "5xx,connect-failure"},
                 "fault": {"delay": {"fixedDelay": "1s", "percentage": {"value": 0.5}}},
                 "mirror": {"host": "ratings"}, "mirrorPercentage": {"value": 5.0}},
                {"rewrite": {"uriRegexRewrite": {"match": "^/a", "rewrite": "/b"}}, "route": [{"destination": {"host": "reviews"}}]}
            ],
            "tcp": [{"route": []}]
        }));
        let (f, skipped) = virtual_service(&L, "VirtualService shop/r", "shop", &vs);
        let f = f.expect("served");
        assert_eq!(f.routes.len(), 1);
        assert_eq!(f.routes[0].service, "reviews.shop");
        let http = &f.routes[0].http;
        assert_eq!(http.len(), 3, "{http:?}");
        let rw = http[1].rewrite.as_ref().unwrap();
        assert_eq!(
            (rw.uri.as_deref(), rw.authority.as_deref()),
            (Some("/new"), Some("reviews.internal"))
        );
        assert_eq!(http[1].request_headers.set["x-lane"], "blue");
        assert_eq!(http[1].request_headers.add["x-tag"], "a");
        assert_eq!(http[1].request_headers.remove, ["x-debug"]);
        assert_eq!(http[1].response_headers.set["x-served-by"], "weft");
        assert_eq!(
            http[1].matches[0].query_params["lang"],
            crate::model::StringMatch::Exact("en".into())
        );
        assert_eq!(http[2].route[0].weight, 90);
        assert_eq!(http[2].route[1].service, "reviews.shop");
        assert_eq!(http[2].retries.as_ref().unwrap().attempts, 3);
        assert_eq!(http[2].timeout, Some(std::time::Duration::from_secs(2)));
        assert_eq!(http[2].mirror.as_ref().unwrap().percent, 5.0);
        assert!(
            skipped["VirtualService shop/r http[3]"].contains("rewrite.uriRegexRewrite is not supported"),
            "{skipped:?}"
        );
        assert!(skipped.contains_key("VirtualService shop/r tcp"));

        let gw = spec(json!({"hosts": ["reviews"], "gateways": ["ingress"], "http": []}));
        let (f, skipped) = virtual_service(&L, "VirtualService shop/g", "shop", &gw);
        assert!(f.is_none());
        assert!(skipped["VirtualService shop/g"].contains("gateways"));
        // Malformed: never a panic.
        let bad = spec(json!({"hosts": "reviews", "http": 7}));
        let (f, skipped) = virtual_service(&L, "VirtualService shop/b", "shop", &bad);
        assert!(f.is_none() && skipped["VirtualService shop/b"].contains("malformed"));
        let bad = spec(json!({"hosts": ["reviews"], "http": [{"route": [{"destination": {"host": 3}}]}, 5]}));
        let (f, skipped) = virtual_service(&L, "VirtualService shop/c", "shop", &bad);
        assert!(f.is_none() && skipped.len() == 3, "{skipped:?}");
    }

    #[test]
    fn a_destination_rule_maps_and_unsupported_policy_skips_it() {
        let dr = DestinationRuleSpec {
            raw: json!({
                "host": "reviews",
                "trafficPolicy": {"loadBalancer": {"simple": "LEAST_REQUEST"},
                    "connectionPool": {"tcp": {"maxConnections": 10, "connectTimeout": "1s"}, "http": {"http1MaxPendingRequests": 5}},
                    "outlierDetection": {"consecutive5xxErrors": 3, "interval": "5s", "baseEjectionTime": "30s", "maxEjectionPercent": 50}},
                "subsets": [{"name": "v1", "labels": {"version": "v1"}}]
            })
            .as_object()
            .unwrap()
            .clone(),
        };
        let (f, skipped) = destination_rule("DestinationRule shop/r", "shop", &dr);
        assert!(skipped.is_empty(), "{skipped:?}");
        let d = &f.unwrap().destinations[0];
        assert_eq!(d.service, "reviews.shop");
        assert_eq!(d.lb, crate::model::LbPolicy::LeastRequest);
        assert_eq!(d.outlier.as_ref().unwrap().consecutive_5xx, Some(3));
        assert_eq!(d.limits.as_ref().unwrap().max_connections, Some(10));
        assert_eq!(d.subsets[0].labels["version"], "v1");
        // consistentHash.httpCookie: ring_hash, and the routes to the host hash on the cookie,
        // generated with ttl and path.
        let mut cookie = dr.clone();
        cookie.raw.insert(
            "trafficPolicy".into(),
            json!({"loadBalancer": {"consistentHash": {"httpCookie": {"name": "u", "path": "/", "ttl": "3600s"}}}}),
        );
        let (f, skipped) = destination_rule("DestinationRule shop/r", "shop", &cookie);
        assert!(skipped.is_empty(), "{skipped:?}");
        assert_eq!(f.unwrap().destinations[0].lb, crate::model::LbPolicy::RingHash);
        assert_eq!(
            destination_rule_hash(&cookie),
            Some(json!({"cookie": {"name": "u", "path": "/", "ttl": "3600s"}}))
        );
        // Refused, naming the field: attributes (not mapped), no name, a bad ttl, path without ttl.
        for (c, why) in [
            (
                json!({"name": "u", "ttl": "0s", "attributes": [{"name": "Secure"}]}),
                "httpCookie.attributes is not supported",
            ),
            (json!({"ttl": "0s"}), "httpCookie.name is required"),
            (json!({"name": "u", "ttl": "soon"}), "httpCookie.ttl"),
            (
                json!({"name": "u", "path": "/"}),
                "httpCookie.path has no effect without ttl",
            ),
        ] {
            let mut bad = dr.clone();
            bad.raw.insert(
                "trafficPolicy".into(),
                json!({"loadBalancer": {"consistentHash": {"httpCookie": c}}}),
            );
            let (f, skipped) = destination_rule("DestinationRule shop/r", "shop", &bad);
            assert!(f.is_none());
            assert!(skipped["DestinationRule shop/r"].contains(why), "{skipped:?}");
        }
    }
}
