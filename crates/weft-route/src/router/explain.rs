//! Route matching with an explanation, for `weft explain`: which virtual host and why, and for
//! every route before the match the first matcher that failed. A separate walk over the same
//! compiled matchers: the request path's `RouteTable::route` is untouched.

use super::{query_param, strip_port, Matcher, PathRule, RouteEntry, RouteTable, Rule, VirtualHostEntry};
use http::header::HeaderMap;
use http::{Method, Uri};

/// How the virtual host was chosen.
pub struct VhostChoice<'t> {
    pub vhost: &'t VirtualHostEntry,
    /// `exact "a.b"`, `suffix "*.b"`, `prefix "a.*"` or `any "*"`.
    pub by: String,
}

/// One route that was tried and did not match.
pub struct Skipped<'t> {
    pub route: &'t RouteEntry,
    pub why: String,
}

pub struct RouteExplanation<'t> {
    pub vhost: Option<VhostChoice<'t>>,
    pub skipped: Vec<Skipped<'t>>,
    pub matched: Option<&'t RouteEntry>,
}

impl RouteTable {
    /// What [`RouteTable::route`] would do with this request, and why.
    pub fn explain(&self, host: &str, method: &Method, uri: &Uri, headers: &HeaderMap) -> RouteExplanation<'_> {
        let Some(vhost) = self.explain_vhost(host) else {
            return RouteExplanation {
                vhost: None,
                skipped: Vec::new(),
                matched: None,
            };
        };
        let mut skipped = Vec::new();
        let mut matched = None;
        for r in &vhost.vhost.routes {
            match r.matcher.why_not(method, uri, headers) {
                None => {
                    matched = Some(r);
                    break;
                }
                Some(why) => skipped.push(Skipped { route: r, why }),
            }
        }
        RouteExplanation {
            vhost: Some(vhost),
            skipped,
            matched,
        }
    }

    fn explain_vhost(&self, host: &str) -> Option<VhostChoice<'_>> {
        let full = host.to_ascii_lowercase();
        let bare = strip_port(&full);
        let chosen = self.virtual_host(host)?;
        let idx = self.vhosts.iter().position(|v| std::ptr::eq(v, chosen))?;
        let by = if self.exact.get(full.as_str()).or_else(|| self.exact.get(bare)) == Some(&idx) {
            format!(
                "exact domain \"{}\"",
                if self.exact.contains_key(full.as_str()) {
                    full.as_str()
                } else {
                    bare
                }
            )
        } else if let Some((s, _)) = self
            .suffixes
            .iter()
            .find(|(s, i)| *i == idx && bare.len() > s.len() && bare.ends_with(s.as_str()))
        {
            format!("suffix domain \"*{s}\"")
        } else if let Some((p, _)) = self
            .prefixes
            .iter()
            .find(|(p, i)| *i == idx && bare.len() > p.len() && bare.starts_with(p.as_str()))
        {
            format!("prefix domain \"{p}*\"")
        } else {
            "the catch-all domain \"*\"".to_string()
        };
        Some(VhostChoice { vhost: chosen, by })
    }
}

impl Rule {
    fn describe(&self) -> String {
        match self {
            Rule::Exact(s) => format!("exact \"{s}\""),
            Rule::Prefix(s) => format!("prefix \"{s}\""),
            Rule::Regex(re) => format!("regex {}", re.as_str()),
            Rule::Present(true) => "present".into(),
            Rule::Present(false) => "absent".into(),
        }
    }
}

fn shown(v: Option<&[u8]>) -> String {
    match v {
        None => "absent".into(),
        Some(v) => format!("\"{}\"", String::from_utf8_lossy(v)),
    }
}

impl Matcher {
    /// The first matcher that fails, described; `None` when the route matches.
    fn why_not(&self, method: &Method, uri: &Uri, headers: &HeaderMap) -> Option<String> {
        let path = uri.path();
        let single = super::Matcher {
            path: match &self.path {
                PathRule::Prefix(p) => PathRule::Prefix(p.clone()),
                PathRule::Exact(p) => PathRule::Exact(p.clone()),
                PathRule::Regex(r) => PathRule::Regex(r.clone()),
            },
            case_sensitive: self.case_sensitive,
            methods: Vec::new(),
            headers: Default::default(),
            query: Vec::new(),
        };
        if !single.matches(method, uri, headers) {
            let what = match &self.path {
                PathRule::Prefix(p) => format!("path prefix \"{p}\""),
                PathRule::Exact(p) => format!("exact path \"{p}\""),
                PathRule::Regex(r) => format!("path regex {}", r.as_str()),
            };
            let case = if self.case_sensitive { "" } else { " (case-insensitive)" };
            return Some(format!("{what}{case} does not match \"{path}\""));
        }
        if !self.methods.is_empty() && !self.methods.contains(method) {
            let list: Vec<&str> = self.methods.iter().map(Method::as_str).collect();
            return Some(format!("method {method} is not one of [{}]", list.join(", ")));
        }
        for (name, rule, invert) in &self.headers.0 {
            let one = super::HeaderMatchers(vec![(name.clone(), rule_clone(rule), *invert)]);
            if !one.matches(headers) {
                let value = headers.get(name).map(|v| v.as_bytes());
                let not = if *invert { "not " } else { "" };
                return Some(format!(
                    "header {name}: wants {not}{}, got {}",
                    rule.describe(),
                    shown(value)
                ));
            }
        }
        let q = uri.query().unwrap_or("");
        for (name, rule) in &self.query {
            let value = query_param(q, name);
            if !rule.matches(value.as_deref().map(str::as_bytes)) {
                return Some(format!(
                    "query parameter {name}: wants {}, got {}",
                    rule.describe(),
                    shown(value.as_deref().map(str::as_bytes))
                ));
            }
        }
        None
    }
}

fn rule_clone(r: &Rule) -> Rule {
    match r {
        Rule::Exact(s) => Rule::Exact(s.clone()),
        Rule::Prefix(s) => Rule::Prefix(s.clone()),
        Rule::Regex(re) => Rule::Regex(re.clone()),
        Rule::Present(p) => Rule::Present(*p),
    }
}
