//! `POST /explain` on the admin API: what this proxy would do with a request, without doing it.
//!
//! Read-only over the running snapshot: route matching is a separate explaining walk
//! (`RouteTable::explain`), rate limiters are peeked at (no token taken), and no load-balancer
//! state advances (round robin is described, not stepped).

use crate::cluster::ClusterRt;
use crate::server::{FilterRt, Server, Snapshot};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Method, Uri};
use serde_json::{json, Value};
use std::sync::atomic::Ordering;
use weft_config::{LbPolicy, Locality, RouteAction};

/// A request to explain, from the admin call's JSON body.
pub struct ExplainRequest {
    pub method: Method,
    pub uri: Uri,
    pub host: String,
    pub headers: HeaderMap,
    pub listener: Option<String>,
    /// The caller's mTLS identity (SPIFFE ID), for authorization; `None`: a plaintext caller.
    pub principal: Option<String>,
    /// The caller's address, for authorization (default 127.0.0.1).
    pub source: std::net::IpAddr,
}

/// Why an explain request was refused (the admin answers 400 with it).
#[derive(Debug)]
pub struct BadRequest(pub String);

impl ExplainRequest {
    /// `{"method": "GET", "url": "http://reviews/p?q=1", "headers": {"x-user": "1"} | [["x-user","1"]],
    /// "listener": "optional"}`.
    pub fn from_json(body: &[u8]) -> Result<ExplainRequest, BadRequest> {
        let v: Value = serde_json::from_slice(body).map_err(|e| BadRequest(format!("body is not JSON: {e}")))?;
        let method = v.get("method").and_then(Value::as_str).unwrap_or("GET");
        let method =
            Method::from_bytes(method.as_bytes()).map_err(|_| BadRequest(format!("method: invalid \"{method}\"")))?;
        let url = v
            .get("url")
            .and_then(Value::as_str)
            .ok_or_else(|| BadRequest("url: required (e.g. \"http://reviews/path\")".into()))?;
        let uri: Uri = url.parse().map_err(|e| BadRequest(format!("url: {e}")))?;
        let mut headers = HeaderMap::new();
        let mut add = |k: &str, val: &str| -> Result<(), BadRequest> {
            let n = HeaderName::from_bytes(k.trim().as_bytes())
                .map_err(|_| BadRequest(format!("headers: invalid name \"{k}\"")))?;
            let hv =
                HeaderValue::from_str(val.trim()).map_err(|_| BadRequest(format!("headers.{k}: invalid value")))?;
            headers.append(n, hv);
            Ok(())
        };
        match v.get("headers") {
            None | Some(Value::Null) => {}
            Some(Value::Object(m)) => {
                for (k, val) in m {
                    add(
                        k,
                        val.as_str()
                            .ok_or_else(|| BadRequest(format!("headers.{k}: must be a string")))?,
                    )?;
                }
            }
            Some(Value::Array(a)) => {
                for pair in a {
                    match pair.as_array().map(Vec::as_slice) {
                        Some([Value::String(k), Value::String(val)]) => add(k, val)?,
                        _ => return Err(BadRequest("headers: a list of [name, value] pairs".into())),
                    }
                }
            }
            Some(_) => return Err(BadRequest("headers: an object or a list of [name, value] pairs".into())),
        }
        let host = match headers.get(http::header::HOST).and_then(|h| h.to_str().ok()) {
            Some(h) => h.to_string(),
            None => uri
                .authority()
                .map(|a| a.as_str().to_string())
                .ok_or_else(|| BadRequest("url: needs a host (http://HOST/path) or a host header".into()))?,
        };
        Ok(ExplainRequest {
            method,
            uri,
            host,
            headers,
            listener: v.get("listener").and_then(Value::as_str).map(str::to_string),
            principal: v.get("principal").and_then(Value::as_str).map(str::to_string),
            source: match v.get("source").and_then(Value::as_str) {
                None => std::net::IpAddr::from([127, 0, 0, 1]),
                Some(s) => s
                    .parse()
                    .map_err(|_| BadRequest(format!("source: \"{s}\" is not an IP address")))?,
            },
        })
    }
}

/// The explanation, as JSON.
pub async fn explain(server: &Server, req: &ExplainRequest) -> Value {
    let snap = server.shared.snapshot.load();
    let path_q = req.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut out = json!({
        "request": {
            "method": req.method.as_str(),
            "host": req.host,
            "path": path_q,
            "headers": req.headers.iter().map(|(k, v)| json!([k.as_str(), String::from_utf8_lossy(v.as_bytes())])).collect::<Vec<_>>(),
        },
    });
    // Candidate listeners: HTTP ones, by name; the first whose routes take the request wins.
    let mut names: Vec<&String> = snap.listeners.keys().collect();
    names.sort();
    let mut candidates = Vec::new();
    for name in names {
        if req.listener.as_ref().is_some_and(|l| l != name) {
            continue;
        }
        let l = &snap.listeners[name];
        let bound = server.listener_addr(name);
        let local = bound.unwrap_or_else(|| l.config.address);
        let peer = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
        let Some(FilterRt::Http(h)) = l.select_chain(local, peer) else {
            continue;
        };
        let chain = l
            .chains
            .iter()
            .position(|(_, f)| matches!(f, FilterRt::Http(x) if std::sync::Arc::ptr_eq(x, h)))
            .unwrap_or(0);
        let routes = h.routes.load_full();
        let routed = routes.route(&req.host, &req.method, &req.uri, &req.headers).is_some();
        candidates.push((name.clone(), local, chain, h.clone(), routes, routed));
    }
    if candidates.is_empty() {
        out["verdict"] = json!({ "outcome": "no_listener", "detail": match &req.listener {
            Some(l) => format!("no HTTP listener named \"{l}\""),
            None => "this proxy has no HTTP listener".to_string(),
        }});
        return out;
    }
    let considered: Vec<Value> = candidates
        .iter()
        .map(|c| json!({ "name": c.0, "routes_request": c.5 }))
        .collect();
    let pick = candidates.iter().position(|c| c.5).unwrap_or(0);
    let (lname, local, chain, h, routes, _) = &candidates[pick];
    out["listener"] = json!({
        "name": lname,
        "address": local.to_string(),
        "filter_chain": chain,
        "filter_chain_match": snap.listeners[lname].chains[*chain].0,
        "considered": considered,
        "why": if candidates[pick].5 { "the first HTTP listener (by name) whose routes match the request" } else { "no listener routes the request; showing the first" },
    });
    let mut policies = serde_json::Map::new();
    let verdict = |o: &mut Value, outcome: &str, flag: &str, status: u16, detail: String| {
        if o.get("verdict").is_none() {
            o["verdict"] = json!({ "outcome": outcome, "response_flags": flag, "status": status, "detail": detail });
        }
    };
    // JWT authentication runs first on the request path (its claims feed authorization), then
    // authorization: the first refusal is the verdict. A remote JWKS not cached yet is fetched, as
    // the first real request would.
    let mut jwt_claims: Option<weft_jwt::Claims> = None;
    if let Some(j) = &h.jwt {
        let mut r = http::Request::new(());
        *r.method_mut() = req.method.clone();
        *r.uri_mut() = req.uri.clone();
        *r.headers_mut() = req.headers.clone();
        let clusters: std::sync::Arc<dyn weft_upstream::ClusterLookup> = server.shared.clone();
        match j.authenticate(&mut r, &clusters).await {
            weft_jwt::Outcome::Pass(c) => {
                policies.insert(
                    "jwt_authn".into(),
                    json!({
                        "decision": "passed",
                        "claims": c.as_deref(),
                        "detail": if c.is_some() { "a valid token: its claims go to authorization" } else { "no token required here, or none given where it is optional" },
                    }),
                );
                jwt_claims = c;
            }
            weft_jwt::Outcome::Reject(rej) => {
                let status = rej.status.http_status().as_u16();
                policies.insert(
                    "jwt_authn".into(),
                    json!({ "decision": "rejected", "status": status, "detail": rej.status.text() }),
                );
                verdict(
                    &mut out,
                    "unauthenticated",
                    "JWT",
                    status,
                    rej.status.text().to_string(),
                );
            }
        }
    }
    match &h.authz {
        None => {
            policies.insert(
                "authorization".into(),
                json!({ "decision": "allowed", "detail": "no authorization filter: nothing is denied by policy" }),
            );
        }
        Some(a) => {
            let d = a.evaluate(&weft_route::authz::AuthzInput {
                http: Some(weft_route::authz::HttpView {
                    method: &req.method,
                    path: path_q,
                    authority: &req.host,
                    headers: &req.headers,
                    jwt: jwt_claims.as_deref(),
                }),
                principal: req.principal.as_deref(),
                direct_remote: req.source,
                remote: req.source,
                local: Some(*local),
                sni: None,
            });
            let detail = match (d.allowed, d.policy) {
                (false, Some(p)) => format!("denied by policy {p}"),
                (false, None) => "denied: ALLOW policies exist and none matches (default deny)".to_string(),
                (true, Some(p)) => format!("allowed by policy {p}"),
                (true, None) => "allowed: no DENY policy matches and no ALLOW policy is in force".to_string(),
            };
            policies.insert(
                "authorization".into(),
                json!({
                    "decision": if d.allowed { "allowed" } else { "denied" },
                    "policy": d.policy.map(|p| &**p),
                    "detail": detail,
                    "response_code_details": d.details.map(|p| &**p),
                    "caller": { "principal": req.principal, "source": req.source.to_string() },
                    "shadow": d.shadow.map(|(ok, p)| json!({
                        "decision": if ok { "allowed" } else { "denied" },
                        "policy": p.map(|p| &**p),
                    })),
                    "audit_policy": d.audited.map(|p| &**p),
                    "config": h.config.authorization,
                }),
            );
            if !d.allowed {
                verdict(&mut out, "denied", "RBAC", 403, detail);
            }
        }
    }
    if let Some(rl) = &h.rate_limit {
        let tokens = rl.peek_tokens(&req.headers);
        policies.insert(
            "listener_local_rate_limit".into(),
            json!({ "config": h.config.local_rate_limit, "tokens_now": tokens, "would_limit": tokens == 0 }),
        );
    }
    let ex = routes.explain(&req.host, &req.method, &req.uri, &req.headers);
    if policies
        .get("listener_local_rate_limit")
        .is_some_and(|p| p["would_limit"] == true)
    {
        verdict(
            &mut out,
            "rate_limited",
            "RL",
            429,
            "the listener's local rate limit has no token left".into(),
        );
    }
    out["route_config"] = json!(routes.name);
    let Some(vh) = &ex.vhost else {
        verdict(
            &mut out,
            "no_route",
            "NR",
            404,
            format!("no virtual host serves \"{}\"", req.host),
        );
        out["policies"] = Value::Object(policies);
        return out;
    };
    out["virtual_host"] = json!({ "name": vh.vhost.name, "matched_by": vh.by });
    out["routes_not_matched"] = ex
        .skipped
        .iter()
        .map(|s| json!({ "route": s.route.name, "why": s.why }))
        .collect();
    let Some(route) = ex.matched else {
        verdict(
            &mut out,
            "no_route",
            "NR",
            404,
            format!("no route of virtual host \"{}\" matches", vh.vhost.name),
        );
        out["policies"] = Value::Object(policies);
        return out;
    };
    out["route"] = json!({ "name": route.name, "action": match &route.action {
        RouteAction::Forward(_) => "forward",
        RouteAction::Redirect(_) => "redirect",
        RouteAction::DirectResponse(_) => "direct_response",
    }});
    let action = match &route.action {
        RouteAction::Forward(a) => a,
        RouteAction::Redirect(r) => {
            verdict(&mut out, "redirect", "-", 301, format!("{r:?}"));
            out["policies"] = Value::Object(policies);
            return out;
        }
        RouteAction::DirectResponse(d) => {
            verdict(
                &mut out,
                "direct_response",
                "-",
                d.status,
                "the route answers by itself".into(),
            );
            out["policies"] = Value::Object(policies);
            return out;
        }
    };
    policies.insert(
        "timeout".into(),
        json!(action.timeout.map(|t| format!("{}ms", t.as_millis()))),
    );
    policies.insert("retry_policy".into(), json!(route.retry_policy));
    if let Some(f) = &action.fault {
        let applies = weft_route::router::HeaderMatchers::new(&f.headers).matches(&req.headers);
        policies.insert(
            "fault".into(),
            json!({ "config": f, "applies_to_this_request": applies }),
        );
        if applies {
            if let Some(a) = f.abort.as_ref().filter(|a| a.percent >= 100.0) {
                verdict(
                    &mut out,
                    "fault_abort",
                    "FI",
                    0,
                    format!("the route's fault aborts every matching request ({:?})", a.status),
                );
            }
        }
    }
    if !action.request_mirror_policies.is_empty() {
        policies.insert("mirrors".into(), json!(action.request_mirror_policies));
    }
    if let Some(c) = &action.local_rate_limit {
        let tokens = route
            .filters
            .as_deref()
            .and_then(|f| f.local_rate_limiter())
            .map(|l| l.peek_tokens(&req.headers));
        let would = tokens == Some(0);
        policies.insert(
            "local_rate_limit".into(),
            json!({ "config": c, "tokens_now": tokens, "would_limit": would }),
        );
        if would {
            verdict(
                &mut out,
                "rate_limited",
                "RL",
                429,
                "the route's local rate limit has no token left".into(),
            );
        }
    }
    if !action.rate_limits.is_empty() {
        policies.insert(
            "rate_limits".into(),
            json!({ "config": action.rate_limits, "note": "asks the rate limit service per request; explain does not call it" }),
        );
    }
    out["policies"] = Value::Object(policies);

    // Cluster: one, or a weighted pick.
    let total: u32 = action.clusters.iter().map(|c| c.weight).sum();
    out["clusters"] = action
        .clusters
        .iter()
        .map(|c| {
            json!({ "name": c.name, "weight": c.weight,
                "share_percent": if total == 0 { 0.0 } else { f64::from(c.weight) * 100.0 / f64::from(total) } })
        })
        .collect();
    out["cluster_pick"] = json!(if action.clusters.len() == 1 {
        "the route's only cluster".to_string()
    } else {
        "each request draws one cluster at random by weight (see share_percent)".to_string()
    });
    let endpoints: Vec<Value> = action
        .clusters
        .iter()
        .map(|c| match server.shared_cluster(&snap, &c.name) {
            None => json!({ "cluster": c.name, "exists": false }),
            Some(cl) => cluster_view(cl, req, &snap.config.node.locality),
        })
        .collect();
    if action.clusters.len() == 1 {
        match &endpoints[0] {
            e if e["exists"] == false => verdict(
                &mut out,
                "no_cluster",
                "NC",
                503,
                format!("cluster \"{}\" does not exist", action.clusters[0].name),
            ),
            e if e["candidates"].as_array().is_some_and(Vec::is_empty) => verdict(
                &mut out,
                "no_healthy_upstream",
                "UH",
                503,
                "no eligible endpoint to pick".into(),
            ),
            _ => {}
        }
    }
    out["upstream"] = Value::Array(endpoints);
    verdict(
        &mut out,
        "forward",
        "-",
        0,
        "forwarded upstream (the status is the upstream's)".into(),
    );
    out
}

fn distance(local: &Locality, h: &Locality) -> u8 {
    let unknown = local.region.is_empty() && local.zone.is_empty();
    if unknown || (h.region == local.region && h.zone == local.zone) {
        0
    } else if h.region == local.region {
        1
    } else {
        2
    }
}

/// A cluster's endpoints as the balancer sees them, the preferred level's candidates, and the pick.
fn cluster_view(c: &ClusterRt, req: &ExplainRequest, local: &Locality) -> Value {
    let set = c.hosts.load();
    // Subset: the tag header's value, else the default subset (as the forwarding step does).
    let subset: Option<std::collections::BTreeMap<String, String>> = c.config.subsets.as_ref().and_then(|s| {
        let tagged = s
            .tag_header
            .as_ref()
            .and_then(|h| req.headers.get(h))
            .and_then(|v| v.to_str().ok());
        match tagged {
            Some(v) => Some([(s.tag_label.clone(), v.to_string())].into_iter().collect()),
            None if !s.default_subset.is_empty() => Some(s.default_subset.clone()),
            None => None,
        }
    });
    let dist = |l: &Locality| if c.config.locality_aware { distance(local, l) } else { 0 };
    let in_subset = |h: &crate::cluster::Host| {
        subset
            .as_ref()
            .is_none_or(|w| w.iter().all(|(k, v)| h.labels.get(k) == Some(v)))
    };
    let hosts: Vec<Value> = set
        .hosts
        .iter()
        .map(|h| {
            let healthy = h.healthy.load(Ordering::Relaxed);
            let ejected = h.outlier.ejected.load(Ordering::Relaxed);
            json!({
                "address": h.address.to_string(),
                "weight": h.weight,
                "healthy": healthy,
                "outlier_ejected": ejected,
                "eligible": healthy && !ejected,
                "priority": h.priority,
                "locality": { "region": h.locality.region, "zone": h.locality.zone },
                "locality_distance": dist(&h.locality),
                "labels": h.labels,
                "in_subset": in_subset(h),
                "active_requests": h.active_rq.load(Ordering::Relaxed),
            })
        })
        .collect();
    // The preferred level: lowest (priority, locality distance) with an eligible host in the subset.
    let eligible =
        |h: &&std::sync::Arc<crate::cluster::Host>| (set.panic || crate::hostset::is_eligible(h)) && in_subset(h);
    let level = set
        .hosts
        .iter()
        .filter(eligible)
        .map(|h| (h.priority, dist(&h.locality)))
        .min();
    let candidates: Vec<String> = match level {
        None => Vec::new(),
        Some(lv) => set
            .hosts
            .iter()
            .filter(eligible)
            .filter(|h| (h.priority, dist(&h.locality)) == lv)
            .map(|h| h.address.to_string())
            .collect(),
    };
    let pick = match (&c.config.lb_policy, candidates.len()) {
        (_, 0) => "none: no eligible endpoint".to_string(),
        (_, 1) => format!("{} (the only candidate)", candidates[0]),
        (LbPolicy::RoundRobin, n) => format!("round robin over {n} candidates: the next pick is the shared cursor's next one (explain does not advance it)"),
        (LbPolicy::LeastRequest { .. }, n) => format!("least request: two of {n} candidates drawn at random by weight, the one with fewer active requests wins"),
        (LbPolicy::Random, n) => format!("random by weight over {n} candidates"),
        (LbPolicy::RingHash { .. } | LbPolicy::Maglev { .. }, n) => format!("consistent hash over {n} candidates, keyed by the route's hash_policy (random when it yields no hash)"),
    };
    json!({
        "cluster": c.name(),
        "exists": true,
        "lb_policy": c.config.lb_policy,
        "panic_mode": set.panic,
        "subset": subset,
        "subset_fallback": c.config.subsets.as_ref().map(|s| s.fallback_policy),
        "preferred_level": level.map(|(p, d)| json!({ "priority": p, "locality_distance": d })),
        "endpoints": hosts,
        "candidates": candidates,
        "pick": pick,
    })
}

impl Server {
    fn shared_cluster<'s>(&self, snap: &'s Snapshot, name: &str) -> Option<&'s ClusterRt> {
        snap.clusters.get(name).map(|c| &**c)
    }
}
