//! The compiled route table: virtual host selection by domain, then first-match over routes.

use http::header::HeaderMap;
use http::{HeaderName, HeaderValue, Method, Uri};
use regex::Regex;
use std::collections::HashMap;
use weft_config::{
    DomainMatch, HeaderAppendAction, HeaderMutations, PathMatch, RetryPolicy, RouteAction, RouteConfig, StringRule,
};
use weft_core::stats::{Metrics, RouteStats};

pub mod explain;

/// Header mutations with names and values parsed once.
#[derive(Default)]
pub struct HeaderOps {
    pub add: Vec<(HeaderName, HeaderValue, HeaderAppendAction)>,
    pub remove: Vec<HeaderName>,
}

impl HeaderOps {
    fn new(add: &[weft_config::HeaderValueOption], remove: &[String]) -> HeaderOps {
        HeaderOps {
            add: add
                .iter()
                .filter_map(|h| {
                    Some((
                        HeaderName::from_bytes(h.name.as_bytes()).ok()?,
                        HeaderValue::from_str(&h.value).ok()?,
                        h.action,
                    ))
                })
                .collect(),
            remove: remove
                .iter()
                .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
                .collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.add.is_empty() && self.remove.is_empty()
    }

    pub fn apply(&self, headers: &mut HeaderMap) {
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, value, action) in &self.add {
            match action {
                HeaderAppendAction::Append => {
                    headers.append(name.clone(), value.clone());
                }
                HeaderAppendAction::Overwrite => {
                    headers.insert(name.clone(), value.clone());
                }
                HeaderAppendAction::AddIfAbsent => {
                    if !headers.contains_key(name) {
                        headers.insert(name.clone(), value.clone());
                    }
                }
            }
        }
    }
}

pub struct Mutations {
    pub request: HeaderOps,
    pub response: HeaderOps,
}

impl Mutations {
    fn new(m: &HeaderMutations) -> Mutations {
        Mutations {
            request: HeaderOps::new(&m.request_add, &m.request_remove),
            response: HeaderOps::new(&m.response_add, &m.response_remove),
        }
    }
}

enum Rule {
    Exact(String),
    Prefix(String),
    Regex(Regex),
    Present(bool),
}

impl Rule {
    fn new(r: &StringRule) -> Rule {
        match r {
            StringRule::Exact(s) => Rule::Exact(s.clone()),
            StringRule::Prefix(s) => Rule::Prefix(s.clone()),
            StringRule::Regex(s) => Rule::Regex(anchored(s)),
            StringRule::Present(p) => Rule::Present(*p),
        }
    }

    fn matches(&self, value: Option<&[u8]>) -> bool {
        match (self, value) {
            (Rule::Present(p), v) => v.is_some() == *p,
            (_, None) => false,
            (Rule::Exact(s), Some(v)) => s.as_bytes() == v,
            (Rule::Prefix(s), Some(v)) => v.starts_with(s.as_bytes()),
            (Rule::Regex(re), Some(v)) => std::str::from_utf8(v).map(|v| re.is_match(v)).unwrap_or(false),
        }
    }
}

fn anchored(pattern: &str) -> Regex {
    // Validated already; anchoring makes "regex" mean "the whole value", as in Envoy.
    Regex::new(&format!("^(?:{pattern})$")).unwrap_or_else(|_| Regex::new("$^").expect("static regex"))
}

enum PathRule {
    Prefix(String),
    Exact(String),
    Regex(Regex),
}

/// Compiled header matchers (route `match.headers`, `fault.headers`): all must match.
#[derive(Default)]
pub struct HeaderMatchers(Vec<(HeaderName, Rule, bool)>);

impl HeaderMatchers {
    pub fn new(list: &[weft_config::HeaderMatcher]) -> HeaderMatchers {
        HeaderMatchers(
            list.iter()
                .filter_map(|h| {
                    Some((
                        HeaderName::from_bytes(h.name.as_bytes()).ok()?,
                        Rule::new(&h.rule),
                        h.invert,
                    ))
                })
                .collect(),
        )
    }

    pub fn matches(&self, headers: &HeaderMap) -> bool {
        for (name, rule, invert) in &self.0 {
            // Multiple values are matched as one comma-joined value, as RFC 9110 allows.
            let mut values = headers.get_all(name).iter();
            let matched = match (values.next(), values.next()) {
                (None, _) => rule.matches(None),
                (Some(v), None) => rule.matches(Some(v.as_bytes())),
                (Some(first), Some(second)) => {
                    let mut joined = first.as_bytes().to_vec();
                    for v in std::iter::once(second).chain(values) {
                        joined.extend_from_slice(b",");
                        joined.extend_from_slice(v.as_bytes());
                    }
                    rule.matches(Some(&joined))
                }
            };
            if matched == *invert {
                return false;
            }
        }
        true
    }
}

struct Matcher {
    path: PathRule,
    case_sensitive: bool,
    methods: Vec<Method>,
    headers: HeaderMatchers,
    query: Vec<(String, Rule)>,
}

impl Matcher {
    fn matches(&self, method: &Method, uri: &Uri, headers: &HeaderMap) -> bool {
        let path = uri.path();
        let ok = match &self.path {
            PathRule::Prefix(p) => {
                path.len() >= p.len()
                    && if self.case_sensitive {
                        path.as_bytes().starts_with(p.as_bytes())
                    } else {
                        path.as_bytes()[..p.len()].eq_ignore_ascii_case(p.as_bytes())
                    }
            }
            PathRule::Exact(p) => {
                if self.case_sensitive {
                    path == p
                } else {
                    path.eq_ignore_ascii_case(p)
                }
            }
            PathRule::Regex(re) => re.is_match(path),
        };
        if !ok {
            return false;
        }
        if !self.methods.is_empty() && !self.methods.contains(method) {
            return false;
        }
        if !self.headers.matches(headers) {
            return false;
        }
        if !self.query.is_empty() {
            let q = uri.query().unwrap_or("");
            for (name, rule) in &self.query {
                let value = query_param(q, name);
                if !rule.matches(value.as_deref().map(str::as_bytes)) {
                    return false;
                }
            }
        }
        true
    }
}

/// The first value of a query parameter, percent-decoded.
pub fn query_param(query: &str, name: &str) -> Option<String> {
    for pair in query.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if percent_decode(k) == name {
            return Some(percent_decode(v));
        }
    }
    None
}

fn percent_decode(s: &str) -> String {
    if !s.contains(['%', '+']) {
        return s.to_string();
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let hex = |c: u8| (c as char).to_digit(16);
                match (hex(b[i + 1]), hex(b[i + 2])) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub struct RouteEntry {
    pub name: String,
    matcher: Matcher,
    pub action: RouteAction,
    pub mutations: Mutations,
    /// The route's retry policy, or the virtual host's.
    pub retry_policy: Option<RetryPolicy>,
    pub stats: RouteStats,
    /// Total of weighted cluster weights (for weighted picks).
    pub total_weight: u32,
    /// How much of the path `prefix_rewrite` replaces: the matched prefix, or the whole exact path.
    pub rewrite_prefix_len: Option<usize>,
    /// Fault injection, mirroring and rate limiting; `None` (one pointer test) when none is configured.
    pub filters: Option<Box<crate::filters::RouteFilters>>,
}

pub struct VirtualHostEntry {
    pub name: String,
    pub routes: Vec<RouteEntry>,
    pub mutations: Mutations,
}

pub struct RouteTable {
    pub name: String,
    pub vhosts: Vec<VirtualHostEntry>,
    exact: HashMap<String, usize>,
    /// Longest suffix first.
    suffixes: Vec<(String, usize)>,
    /// Longest prefix first.
    prefixes: Vec<(String, usize)>,
    any: Option<usize>,
    pub mutations: Mutations,
    /// Some route generates hash cookies (a cookie hash policy with a ttl): connections then learn
    /// their local address, which the generated value is made from.
    pub generates_cookies: bool,
}

impl RouteTable {
    pub fn new(rc: &RouteConfig, listener: &str, metrics: &Metrics) -> RouteTable {
        let mut exact = HashMap::new();
        let mut suffixes = Vec::new();
        let mut prefixes = Vec::new();
        let mut any = None;
        let mut vhosts = Vec::new();
        for (i, vh) in rc.virtual_hosts.iter().enumerate() {
            for d in &vh.domains {
                match d {
                    DomainMatch::Exact(s) => {
                        exact.insert(s.clone(), i);
                    }
                    DomainMatch::Suffix(s) => suffixes.push((s.clone(), i)),
                    DomainMatch::Prefix(s) => prefixes.push((s.clone(), i)),
                    DomainMatch::Any => any = Some(i),
                }
            }
            let routes = vh
                .routes
                .iter()
                .enumerate()
                .map(|(j, r)| {
                    let name = if r.name.is_empty() {
                        format!("route{j}")
                    } else {
                        r.name.clone()
                    };
                    let m = &r.match_;
                    let path = match &m.path {
                        PathMatch::Prefix(p) => PathRule::Prefix(p.clone()),
                        PathMatch::Exact(p) => PathRule::Exact(p.clone()),
                        PathMatch::Regex(re) => PathRule::Regex(anchored(re)),
                    };
                    let (retry_policy, total_weight) = match &r.action {
                        RouteAction::Forward(f) => (
                            f.retry_policy.clone().or_else(|| vh.retry_policy.clone()),
                            f.clusters.iter().map(|c| c.weight).sum(),
                        ),
                        _ => (None, 0),
                    };
                    let rewrite_prefix_len = match &m.path {
                        PathMatch::Prefix(p) | PathMatch::Exact(p) => Some(p.len()),
                        PathMatch::Regex(_) => None,
                    };
                    let filters = match &r.action {
                        RouteAction::Forward(f) if f.has_filters() => Some(Box::new(
                            crate::filters::RouteFilters::new(f, listener, &vh.name, &name, metrics),
                        )),
                        _ => None,
                    };
                    RouteEntry {
                        filters,
                        rewrite_prefix_len,
                        stats: metrics.route(listener, &vh.name, &name),
                        name,
                        matcher: Matcher {
                            path,
                            case_sensitive: m.case_sensitive,
                            methods: m
                                .methods
                                .iter()
                                .filter_map(|s| Method::from_bytes(s.as_bytes()).ok())
                                .collect(),
                            headers: HeaderMatchers::new(&m.headers),
                            query: m
                                .query_parameters
                                .iter()
                                .map(|q| (q.name.clone(), Rule::new(&q.rule)))
                                .collect(),
                        },
                        action: r.action.clone(),
                        mutations: Mutations::new(&r.headers),
                        retry_policy,
                        total_weight,
                    }
                })
                .collect();
            vhosts.push(VirtualHostEntry {
                name: vh.name.clone(),
                routes,
                mutations: Mutations::new(&vh.headers),
            });
        }
        suffixes.sort_by_key(|s| std::cmp::Reverse(s.0.len()));
        prefixes.sort_by_key(|p| std::cmp::Reverse(p.0.len()));
        RouteTable {
            name: rc.name.clone(),
            vhosts,
            exact,
            suffixes,
            prefixes,
            any,
            mutations: Mutations::new(&rc.headers),
            generates_cookies: rc
                .virtual_hosts
                .iter()
                .flat_map(|v| &v.routes)
                .any(|r| match &r.action {
                    RouteAction::Forward(f) => f
                        .hash_policy
                        .iter()
                        .any(|h| matches!(h, weft_config::HashPolicy::Cookie { generate: Some(_), .. })),
                    _ => false,
                }),
        }
    }

    /// Picks the virtual host for a host header value (port ignored, case-insensitive).
    pub fn virtual_host(&self, host: &str) -> Option<&VirtualHostEntry> {
        let lowered;
        let full = if host.bytes().any(|b| b.is_ascii_uppercase()) {
            lowered = host.to_ascii_lowercase();
            lowered.as_str()
        } else {
            host
        };
        let host = strip_port(full);
        if !self.exact.is_empty() {
            // A domain listed with its port ("example.com:8080") matches first, then the bare name.
            if let Some(&i) = self.exact.get(full).or_else(|| self.exact.get(host)) {
                return Some(&self.vhosts[i]);
            }
        }
        for (s, i) in &self.suffixes {
            if host.len() > s.len() && host.ends_with(s.as_str()) {
                return Some(&self.vhosts[*i]);
            }
        }
        for (p, i) in &self.prefixes {
            if host.len() > p.len() && host.starts_with(p.as_str()) {
                return Some(&self.vhosts[*i]);
            }
        }
        self.any.map(|i| &self.vhosts[i])
    }

    /// Finds the virtual host and the first matching route.
    pub fn route(
        &self,
        host: &str,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
    ) -> Option<(&VirtualHostEntry, &RouteEntry)> {
        let vh = self.virtual_host(host)?;
        let r = vh.routes.iter().find(|r| r.matcher.matches(method, uri, headers))?;
        Some((vh, r))
    }
}

/// The host part of a `host[:port]` authority (IPv6 literals keep their brackets).
pub fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        // [v6]:port
        return match host.find(']') {
            Some(i) => &host[..=i],
            None => host,
        };
    }
    match host.rfind(':') {
        Some(i) if host[i + 1..].bytes().all(|b| b.is_ascii_digit()) => &host[..i],
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(yaml_routes: &str) -> RouteTable {
        let yaml = format!(
            "listeners:\n- name: l\n  address: 127.0.0.1:1\n  http:\n    route_config:\n      virtual_hosts:\n{yaml_routes}\nclusters:\n- name: c\n  endpoints: [{{address: 127.0.0.1:2}}]\n"
        );
        let cfg = weft_config::from_yaml(&yaml).unwrap();
        let weft_config::NetworkFilter::Http(h) = &cfg.listeners[0].filter_chains[0].filter else {
            panic!()
        };
        RouteTable::new(&h.route_config, "l", &Metrics::new())
    }

    fn pick<'a>(
        t: &'a RouteTable,
        host: &str,
        method: &str,
        uri: &str,
        headers: &[(&str, &str)],
    ) -> Option<(&'a str, &'a str)> {
        let mut h = HeaderMap::new();
        for (k, v) in headers {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        let uri: Uri = uri.parse().unwrap();
        t.route(host, &Method::from_bytes(method.as_bytes()).unwrap(), &uri, &h)
            .map(|(v, r)| (v.name.as_str(), r.name.as_str()))
    }

    #[test]
    fn domains_exact_suffix_prefix_any() {
        let t = table(
            r#"        - { name: exact, domains: [api.example.com], routes: [{ name: r, route: { cluster: c } }] }
        - { name: suffix, domains: ["*.example.com"], routes: [{ name: r, route: { cluster: c } }] }
        - { name: longer, domains: ["*.eu.example.com"], routes: [{ name: r, route: { cluster: c } }] }
        - { name: prefix, domains: ["www.example.*"], routes: [{ name: r, route: { cluster: c } }] }
        - { name: any, domains: ["*"], routes: [{ name: r, route: { cluster: c } }] }"#,
        );
        assert_eq!(pick(&t, "api.example.com", "GET", "/", &[]).unwrap().0, "exact");
        assert_eq!(pick(&t, "API.Example.com:8080", "GET", "/", &[]).unwrap().0, "exact");
        assert_eq!(pick(&t, "x.example.com", "GET", "/", &[]).unwrap().0, "suffix");
        assert_eq!(pick(&t, "x.eu.example.com", "GET", "/", &[]).unwrap().0, "longer");
        assert_eq!(pick(&t, "www.example.org", "GET", "/", &[]).unwrap().0, "prefix");
        assert_eq!(pick(&t, "other", "GET", "/", &[]).unwrap().0, "any");
        assert_eq!(pick(&t, "[::1]:80", "GET", "/", &[]).unwrap().0, "any");
        assert_eq!(pick(&t, "api.example.com:9000", "GET", "/", &[]).unwrap().0, "exact");
    }

    #[test]
    fn route_matching() {
        let t = table(
            r#"        - name: v
          domains: ["*"]
          routes:
            - { name: exact, match: { path: /exact }, route: { cluster: c } }
            - { name: regex, match: { regex: "/items/[0-9]+" }, route: { cluster: c } }
            - { name: post, match: { prefix: /api, methods: [POST] }, route: { cluster: c } }
            - { name: hdr, match: { prefix: /api, headers: [{ name: x-canary, exact: "yes" }] }, route: { cluster: c } }
            - { name: hdr-re, match: { prefix: /api, headers: [{ name: x-user, regex: "u[0-9]+" }] }, route: { cluster: c } }
            - { name: present, match: { prefix: /api, headers: [{ name: x-debug, present: true }] }, route: { cluster: c } }
            - { name: query, match: { prefix: /api, query_parameters: [{ name: v, exact: "2 x" }] }, route: { cluster: c } }
            - { name: ci, match: { prefix: /CASE, case_sensitive: false }, route: { cluster: c } }
            - { name: api, match: { prefix: /api }, route: { cluster: c } }"#,
        );
        let r = |m: &str, u: &str, h: &[(&str, &str)]| pick(&t, "h", m, u, h).map(|x| x.1);
        assert_eq!(r("GET", "/exact", &[]), Some("exact"));
        assert_eq!(r("GET", "/exact/more", &[]), None);
        assert_eq!(r("GET", "/items/42", &[]), Some("regex"));
        assert_eq!(r("GET", "/items/42x", &[]), None);
        assert_eq!(r("POST", "/api/x", &[]), Some("post"));
        assert_eq!(r("GET", "/api/x", &[("x-canary", "yes")]), Some("hdr"));
        assert_eq!(r("GET", "/api/x", &[("x-canary", "no")]), Some("api"));
        assert_eq!(r("GET", "/api/x", &[("x-user", "u12")]), Some("hdr-re"));
        assert_eq!(r("GET", "/api/x", &[("x-user", "u12z")]), Some("api"));
        assert_eq!(r("GET", "/api/x", &[("x-debug", "")]), Some("present"));
        assert_eq!(r("GET", "/api/x?a=1&v=2+x", &[]), Some("query"));
        assert_eq!(r("GET", "/api/x?v=2%20x", &[]), Some("query"));
        assert_eq!(r("GET", "/api/x?v=3", &[]), Some("api"));
        assert_eq!(r("GET", "/case/x", &[]), Some("ci"));
        assert_eq!(r("GET", "/nothing", &[]), None);
    }

    #[test]
    fn percent_decoding_is_total() {
        for s in ["%", "%4", "%zz", "a%2", "%41%42", "+"] {
            let _ = percent_decode(s);
        }
        assert_eq!(percent_decode("%41%42"), "AB");
    }
}
