//! Authorization (Envoy RBAC, Istio AuthorizationPolicy semantics), compiled once per
//! configuration and evaluated per request or per TCP connection.
//!
//! Evaluation allocates nothing except when a matched header has several values (they are joined
//! with `,` as Envoy does). Strings are compared as bytes; `ignore_case` values are compared with
//! ASCII case folding; regular expressions are compiled at build time.

use http::header::{HeaderMap, HeaderName};
use http::Method;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use weft_config::authz::{Authorization, Permission, Principal, RbacAction, RbacHeader, RbacStage, StrKind, StrMatch};
use weft_config::CidrRange;
use weft_core::shard::Counter;

/// `%RESPONSE_CODE_DETAILS%` of a request denied without a matching policy (an ALLOW stage
/// nothing matched).
pub const DENIED_NO_POLICY: &str = "rbac_access_denied_matched_policy[none]";
/// The body of a denied HTTP request (Envoy's).
pub const DENIED_BODY: &str = "RBAC: access denied";

/// What one request (or connection) shows authorization.
pub struct AuthzInput<'a> {
    /// `None` on a TCP proxy: HTTP matchers then do not match.
    pub http: Option<HttpView<'a>>,
    /// The mTLS peer's principal (SPIFFE ID, else first SAN, else subject).
    pub principal: Option<&'a str>,
    /// The connection's peer address.
    pub direct_remote: IpAddr,
    /// The client's address (from `x-forwarded-for` when trusted), else the peer's.
    pub remote: IpAddr,
    /// The address the client connected to.
    pub local: Option<SocketAddr>,
    /// The TLS server name the client asked for.
    pub sni: Option<&'a str>,
}

#[derive(Clone, Copy)]
pub struct HttpView<'a> {
    pub method: &'a Method,
    /// `:path` with its query.
    pub path: &'a str,
    pub authority: &'a str,
    pub headers: &'a HeaderMap,
    /// The claims of the request's validated JWT (`jwt_authn`), if any.
    pub jwt: Option<&'a serde_json::Map<String, serde_json::Value>>,
}

/// The outcome of one evaluation.
#[derive(Clone, Copy, Debug)]
pub struct Decision<'a> {
    pub allowed: bool,
    /// The enforced policy that denied, or the ALLOW policy that allowed; `None`: default deny, or
    /// allowed with no ALLOW policy in force.
    pub policy: Option<&'a Arc<str>>,
    /// For a denial: `rbac_access_denied_matched_policy[<name>]` (`[none]` for a default deny).
    pub details: Option<&'a Arc<str>>,
    /// What shadow (dry-run) policies would have decided: (allowed, policy).
    pub shadow: Option<(bool, Option<&'a Arc<str>>)>,
    /// An AUDIT (LOG) policy that matched.
    pub audited: Option<&'a Arc<str>>,
}

impl Decision<'_> {
    /// The deciding policy's name.
    pub fn policy_str(&self) -> Option<&str> {
        self.policy.map(|p| &**p)
    }

    /// `%RESPONSE_CODE_DETAILS%` of a denial.
    pub fn details_str(&self) -> Option<&str> {
        self.details.map(|p| &**p)
    }

    /// What shadow policies would have decided, and which one matched.
    pub fn shadow_str(&self) -> Option<(bool, Option<&str>)> {
        self.shadow.map(|(a, p)| (a, p.map(|p| &**p)))
    }
}

pub struct Authorizer {
    stages: Vec<Stage>,
    enforced: bool,
    remote_ip: bool,
    none_details: Arc<str>,
    counters: Option<AuthzCounters>,
}

/// `weft_rbac_{allowed,denied,shadow_allowed,shadow_denied}_total` of one listener.
#[derive(Clone)]
pub struct AuthzCounters {
    pub allowed: Counter,
    pub denied: Counter,
    pub shadow_allowed: Counter,
    pub shadow_denied: Counter,
}

struct Stage {
    action: RbacAction,
    shadow: bool,
    policies: Vec<Policy>,
}

struct Policy {
    name: Arc<str>,
    details: Arc<str>,
    permissions: Vec<Perm>,
    principals: Vec<Princ>,
}

enum Perm {
    Any,
    And(Vec<Perm>),
    Or(Vec<Perm>),
    Not(Box<Perm>),
    Header(Header),
    UrlPath(Str),
    DestinationPort(u16),
    DestinationIp(CidrRange),
    Sni(Str),
}

enum Princ {
    Any,
    And(Vec<Princ>),
    Or(Vec<Princ>),
    Not(Box<Princ>),
    Authenticated(Option<Str>),
    DirectRemoteIp(CidrRange),
    RemoteIp(CidrRange),
    Header(Header),
    UrlPath(Str),
    RequestPrincipal(Option<Str>),
    RequestClaim(Box<[String]>, Option<Str>),
}

enum HeaderKey {
    Method,
    Path,
    Authority,
    Named(HeaderName),
}

struct Header {
    key: HeaderKey,
    rule: Option<Str>,
    invert: bool,
}

enum StrRule {
    Exact(Box<[u8]>),
    Prefix(Box<[u8]>),
    Suffix(Box<[u8]>),
    Contains(Box<[u8]>),
    Regex(regex::bytes::Regex),
}

struct Str {
    rule: StrRule,
    fold: bool,
}

impl Str {
    fn new(m: &StrMatch) -> Str {
        let v = m.value.as_bytes().into();
        let rule = match m.kind {
            StrKind::Exact => StrRule::Exact(v),
            StrKind::Prefix => StrRule::Prefix(v),
            StrKind::Suffix => StrRule::Suffix(v),
            StrKind::Contains => StrRule::Contains(v),
            StrKind::Regex => {
                let flags = if m.ignore_case { "(?i)" } else { "" };
                // Validated when the configuration was read.
                StrRule::Regex(
                    regex::bytes::Regex::new(&format!("{flags}^(?:{})$", m.value))
                        .unwrap_or_else(|_| regex::bytes::Regex::new("$^").expect("a valid regex")),
                )
            }
        };
        Str {
            rule,
            fold: m.ignore_case,
        }
    }

    fn matches(&self, s: &[u8]) -> bool {
        let eq = |a: &[u8], b: &[u8]| if self.fold { a.eq_ignore_ascii_case(b) } else { a == b };
        match &self.rule {
            StrRule::Exact(v) => eq(s, v),
            StrRule::Prefix(v) => s.len() >= v.len() && eq(&s[..v.len()], v),
            StrRule::Suffix(v) => s.len() >= v.len() && eq(&s[s.len() - v.len()..], v),
            StrRule::Contains(v) => v.is_empty() || s.windows(v.len()).any(|w| eq(w, v)),
            StrRule::Regex(r) => r.is_match(s),
        }
    }
}

impl Header {
    fn new(h: &RbacHeader) -> Option<Header> {
        let key = match h.name.as_str() {
            ":method" => HeaderKey::Method,
            ":path" => HeaderKey::Path,
            ":authority" | "host" => HeaderKey::Authority,
            n => HeaderKey::Named(HeaderName::from_bytes(n.as_bytes()).ok()?),
        };
        Some(Header {
            key,
            rule: h.rule.as_ref().map(Str::new),
            invert: h.invert,
        })
    }

    fn matches(&self, h: &HttpView<'_>) -> bool {
        let test = |v: Option<&[u8]>| match (v, &self.rule) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(v), Some(r)) => r.matches(v),
        };
        let m = match &self.key {
            HeaderKey::Method => test(Some(h.method.as_str().as_bytes())),
            HeaderKey::Path => test(Some(h.path.as_bytes())),
            HeaderKey::Authority => test(Some(h.authority.as_bytes())),
            HeaderKey::Named(n) => {
                let mut values = h.headers.get_all(n).iter();
                match (values.next(), values.next()) {
                    (None, _) => test(None),
                    (Some(v), None) => test(Some(v.as_bytes())),
                    (Some(first), Some(second)) => {
                        let mut joined = first.as_bytes().to_vec();
                        for v in std::iter::once(second).chain(values) {
                            joined.push(b',');
                            joined.extend_from_slice(v.as_bytes());
                        }
                        test(Some(&joined))
                    }
                }
            }
        };
        m != self.invert
    }
}

fn url_path(p: &str) -> &[u8] {
    p.split(['?', '#']).next().unwrap_or(p).as_bytes()
}

impl Perm {
    fn new(p: &Permission) -> Perm {
        match p {
            Permission::Any => Perm::Any,
            Permission::And(v) => Perm::And(v.iter().map(Perm::new).collect()),
            Permission::Or(v) => Perm::Or(v.iter().map(Perm::new).collect()),
            Permission::Not(x) => Perm::Not(Box::new(Perm::new(x))),
            // A header name that cannot be one never matches.
            Permission::Header(h) => Header::new(h).map_or(Perm::Or(Vec::new()), Perm::Header),
            Permission::UrlPath(m) => Perm::UrlPath(Str::new(m)),
            Permission::DestinationPort(p) => Perm::DestinationPort(*p),
            Permission::DestinationIp(c) => Perm::DestinationIp(*c),
            Permission::RequestedServerName(m) => Perm::Sni(Str::new(m)),
        }
    }

    fn matches(&self, r: &AuthzInput<'_>) -> bool {
        match self {
            Perm::Any => true,
            Perm::And(v) => v.iter().all(|p| p.matches(r)),
            Perm::Or(v) => v.iter().any(|p| p.matches(r)),
            Perm::Not(p) => !p.matches(r),
            Perm::Header(h) => r.http.as_ref().is_some_and(|v| h.matches(v)),
            Perm::UrlPath(m) => r.http.as_ref().is_some_and(|v| m.matches(url_path(v.path))),
            Perm::DestinationPort(p) => r.local.is_some_and(|l| l.port() == *p),
            Perm::DestinationIp(c) => r.local.is_some_and(|l| c.contains(l.ip())),
            Perm::Sni(m) => r.sni.is_some_and(|s| m.matches(s.as_bytes())),
        }
    }
}

impl Princ {
    fn new(p: &Principal) -> Princ {
        match p {
            Principal::Any => Princ::Any,
            Principal::And(v) => Princ::And(v.iter().map(Princ::new).collect()),
            Principal::Or(v) => Princ::Or(v.iter().map(Princ::new).collect()),
            Principal::Not(x) => Princ::Not(Box::new(Princ::new(x))),
            Principal::Authenticated(m) => Princ::Authenticated(m.as_ref().map(Str::new)),
            Principal::DirectRemoteIp(c) => Princ::DirectRemoteIp(*c),
            Principal::RemoteIp(c) => Princ::RemoteIp(*c),
            Principal::Header(h) => Header::new(h).map_or(Princ::Or(Vec::new()), Princ::Header),
            Principal::UrlPath(m) => Princ::UrlPath(Str::new(m)),
            Principal::RequestPrincipal(m) => Princ::RequestPrincipal(m.as_ref().map(Str::new)),
            Principal::RequestClaim { path, rule } => {
                Princ::RequestClaim(path.clone().into_boxed_slice(), rule.as_ref().map(Str::new))
            }
        }
    }

    fn matches(&self, r: &AuthzInput<'_>) -> bool {
        match self {
            Princ::Any => true,
            Princ::And(v) => v.iter().all(|p| p.matches(r)),
            Princ::Or(v) => v.iter().any(|p| p.matches(r)),
            Princ::Not(p) => !p.matches(r),
            Princ::Authenticated(m) => match (r.principal, m) {
                (None, _) => false,
                (Some(_), None) => true,
                (Some(p), Some(m)) => m.matches(p.as_bytes()),
            },
            Princ::DirectRemoteIp(c) => c.contains(r.direct_remote),
            Princ::RemoteIp(c) => c.contains(r.remote),
            Princ::Header(h) => r.http.as_ref().is_some_and(|v| h.matches(v)),
            Princ::UrlPath(m) => r.http.as_ref().is_some_and(|v| m.matches(url_path(v.path))),
            Princ::RequestPrincipal(m) => {
                let Some(claims) = r.http.as_ref().and_then(|v| v.jwt) else {
                    return false;
                };
                match m {
                    None => true,
                    Some(m) => request_principal(claims).is_some_and(|p| m.matches(p.as_bytes())),
                }
            }
            Princ::RequestClaim(path, m) => {
                let Some(claims) = r.http.as_ref().and_then(|v| v.jwt) else {
                    return false;
                };
                let Some(v) = claim(claims, path) else {
                    return false;
                };
                match m {
                    None => true,
                    Some(m) => claim_matches(v, m),
                }
            }
        }
    }
}

/// Istio's request principal: `<iss>/<sub>` of the validated token (both must be strings).
pub fn request_principal(claims: &serde_json::Map<String, serde_json::Value>) -> Option<String> {
    let iss = claims.get("iss")?.as_str()?;
    let sub = claims.get("sub")?.as_str()?;
    Some(format!("{iss}/{sub}"))
}

/// A (nested) claim.
pub fn claim<'a, S: AsRef<str>>(
    claims: &'a serde_json::Map<String, serde_json::Value>,
    path: &[S],
) -> Option<&'a serde_json::Value> {
    let (first, rest) = path.split_first()?;
    let mut v = claims.get(first.as_ref())?;
    for k in rest {
        v = v.as_object()?.get(k.as_ref())?;
    }
    Some(v)
}

/// A string claim matches its value; a list claim when any of its string elements does (Istio);
/// numbers and booleans are compared in their JSON text.
fn claim_matches(v: &serde_json::Value, m: &Str) -> bool {
    match v {
        serde_json::Value::String(s) => m.matches(s.as_bytes()),
        serde_json::Value::Array(items) => items.iter().any(|i| match i {
            serde_json::Value::String(s) => m.matches(s.as_bytes()),
            serde_json::Value::Number(_) | serde_json::Value::Bool(_) => m.matches(i.to_string().as_bytes()),
            _ => false,
        }),
        serde_json::Value::Number(_) | serde_json::Value::Bool(_) => m.matches(v.to_string().as_bytes()),
        _ => false,
    }
}

fn reads_remote_ip(p: &Principal) -> bool {
    match p {
        Principal::RemoteIp(_) => true,
        Principal::And(v) | Principal::Or(v) => v.iter().any(reads_remote_ip),
        Principal::Not(x) => reads_remote_ip(x),
        _ => false,
    }
}

impl Policy {
    fn matches(&self, r: &AuthzInput<'_>) -> bool {
        self.permissions.iter().any(|p| p.matches(r)) && self.principals.iter().any(|p| p.matches(r))
    }
}

impl Stage {
    fn new(s: &RbacStage) -> Stage {
        Stage {
            action: s.action,
            shadow: s.shadow,
            policies: s
                .policies
                .iter()
                .map(|p| Policy {
                    name: p.name.as_str().into(),
                    details: format!("rbac_access_denied_matched_policy[{}]", p.name).into(),
                    permissions: p.permissions.iter().map(Perm::new).collect(),
                    principals: p.principals.iter().map(Princ::new).collect(),
                })
                .collect(),
        }
    }

    fn first_match(&self, r: &AuthzInput<'_>) -> Option<&Policy> {
        self.policies.iter().find(|p| p.matches(r))
    }
}

impl Authorizer {
    pub fn new(a: &Authorization, counters: Option<AuthzCounters>) -> Authorizer {
        let stages: Vec<Stage> = a.stages.iter().map(Stage::new).collect();
        Authorizer {
            remote_ip: a
                .stages
                .iter()
                .flat_map(|s| &s.policies)
                .flat_map(|p| &p.principals)
                .any(reads_remote_ip),
            none_details: DENIED_NO_POLICY.into(),
            enforced: stages.iter().any(|s| !s.shadow && s.action != RbacAction::Log),
            stages,
            counters,
        }
    }

    /// Evaluates the stages in order (shadow ones first, then DENY before ALLOW) and counts the
    /// outcome.
    pub fn check<'s>(&'s self, r: &AuthzInput<'_>) -> Decision<'s> {
        let d = self.evaluate(r);
        if let Some(c) = &self.counters {
            match d.shadow {
                Some((true, _)) => c.shadow_allowed.inc(),
                Some((false, _)) => c.shadow_denied.inc(),
                None => {}
            }
            if !d.allowed {
                c.denied.inc();
            } else if self.enforced {
                c.allowed.inc();
            }
        }
        d
    }

    /// [`Authorizer::check`] without counting (for `weft explain`).
    pub fn evaluate<'s>(&'s self, r: &AuthzInput<'_>) -> Decision<'s> {
        let mut d = Decision {
            allowed: true,
            policy: None,
            details: None,
            shadow: None,
            audited: None,
        };
        for s in &self.stages {
            let hit = s.first_match(r);
            let (allowed, policy) = match (s.action, hit) {
                (RbacAction::Log, hit) => {
                    if !s.shadow && d.audited.is_none() {
                        d.audited = hit.map(|p| &p.name);
                    }
                    continue;
                }
                (RbacAction::Allow, None) => (false, None),
                (RbacAction::Allow, Some(p)) => (true, Some(p)),
                (RbacAction::Deny, Some(p)) => (false, Some(p)),
                (RbacAction::Deny, None) => (true, None),
            };
            if s.shadow {
                d.shadow = match d.shadow {
                    Some((false, p)) => Some((false, p)),
                    prev => Some((allowed, policy.map(|p| &p.name).or(prev.and_then(|s| s.1)))),
                };
                continue;
            }
            if !allowed {
                d.allowed = false;
                d.policy = policy.map(|p| &p.name);
                d.details = Some(policy.map_or(&self.none_details, |p| &p.details));
                return d;
            }
            if s.action == RbacAction::Allow && d.policy.is_none() {
                d.policy = policy.map(|p| &p.name);
            }
        }
        d
    }

    /// Whether a policy reads the client address behind proxies (`remote_ip`): only then is
    /// `x-forwarded-for` parsed.
    pub fn uses_remote_ip(&self) -> bool {
        self.remote_ip
    }

    /// Whether any stage is enforced (not shadow, not audit).
    pub fn enforces(&self) -> bool {
        self.enforced
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_config::authz::{validate, RawAuthorization};

    fn authz(yaml: &str) -> Authorizer {
        let raw: RawAuthorization = serde_saphyr::from_str(yaml).unwrap();
        let (a, e) = validate("a", &raw, false);
        assert!(e.is_empty(), "{e:?}");
        Authorizer::new(&a.unwrap(), None)
    }

    fn req<'a>(
        principal: Option<&'a str>,
        method: &'a Method,
        path: &'a str,
        headers: &'a HeaderMap,
    ) -> AuthzInput<'a> {
        AuthzInput {
            http: Some(HttpView {
                method,
                path,
                authority: "ratings:9080",
                headers,
                jwt: None,
            }),
            principal,
            direct_remote: "10.1.2.3".parse().unwrap(),
            remote: "192.0.2.7".parse().unwrap(),
            local: Some("127.0.0.1:9080".parse().unwrap()),
            sni: None,
        }
    }

    const POLICY: &str = "policies:\n- name: deny-admin\n  action: DENY\n  rules: [{to: [{paths: ['/admin*']}]}]\n- name: allow-reviews\n  action: ALLOW\n  rules:\n  - from: [{principals: ['spiffe://td/ns/default/sa/reviews'], ip_blocks: [10.0.0.0/8]}]\n    to: [{methods: [GET], hosts: ['ratings*'], ports: [9080]}]\n  - from: [{namespaces: [ops]}]\n    when: [{key: 'request.headers[x-ops]', values: ['yes']}]\n- name: watch\n  action: DENY\n  dry_run: true\n  rules: [{to: [{methods: [GET]}]}]\n";

    #[test]
    fn istio_semantics() {
        let a = authz(POLICY);
        let h = HeaderMap::new();
        let get = Method::GET;
        let reviews = Some("spiffe://td/ns/default/sa/reviews");
        let d = a.check(&req(reviews, &get, "/ratings/1?x=1", &h));
        assert!(d.allowed);
        assert_eq!(d.policy_str(), Some("allow-reviews[0]"));
        assert_eq!(d.shadow_str(), Some((false, Some("watch[0]"))));
        // DENY wins over ALLOW.
        let d = a.check(&req(reviews, &get, "/admin/x", &h));
        assert!(!d.allowed);
        assert_eq!(
            d.details_str(),
            Some("rbac_access_denied_matched_policy[deny-admin[0]]")
        );
        // Another principal: nothing allows → default deny.
        let d = a.check(&req(Some("spiffe://td/ns/default/sa/other"), &get, "/r", &h));
        assert!(!d.allowed);
        assert_eq!(d.details_str(), Some(DENIED_NO_POLICY));
        // No certificate: denied.
        assert!(!a.check(&req(None, &get, "/r", &h)).allowed);
        // Wrong method.
        assert!(!a.check(&req(reviews, &Method::POST, "/r", &h)).allowed);
        // Namespace plus a `when` header.
        let ops = Some("spiffe://td/ns/ops/sa/x");
        assert!(!a.check(&req(ops, &Method::POST, "/r", &h)).allowed);
        let mut with = HeaderMap::new();
        with.insert("x-ops", "yes".parse().unwrap());
        let d = a.check(&req(ops, &Method::POST, "/r", &with));
        assert!(d.allowed);
        assert_eq!(d.policy_str(), Some("allow-reviews[1]"));
    }

    #[test]
    fn envoy_trees() {
        let a = authz("rbac:\n- rules:\n    action: DENY\n    policies:\n      p:\n        permissions: [{and_rules: {rules: [{url_path: {suffix: .php}}, {not_rule: {header: {name: x-safe, present: true}}}]}}]\n        principals: [{or_ids: {ids: [{remote_ip: 192.0.2.0/24}, {direct_remote_ip: 10.9.0.0/16}]}}]\n");
        let h = HeaderMap::new();
        let get = Method::GET;
        assert!(!a.check(&req(None, &get, "/x.php", &h)).allowed);
        assert!(a.check(&req(None, &get, "/x.html", &h)).allowed);
        let mut safe = HeaderMap::new();
        safe.insert("x-safe", "1".parse().unwrap());
        assert!(a.check(&req(None, &get, "/x.php", &safe)).allowed);
        // TCP input: header and path matchers never match.
        let tcp = AuthzInput {
            http: None,
            ..req(None, &get, "/x.php", &h)
        };
        assert!(a.check(&tcp).allowed);
    }

    #[test]
    fn jwt_claims_and_request_principals() {
        let a = authz(
            "policies:\n- {name: admins, action: ALLOW, rules: [{from: [{requestPrincipals: ['https://idp/*']}], when: [{key: 'request.auth.claims[realm][groups]', values: [admin]}]}]}\n- {name: no-guests, action: DENY, rules: [{when: [{key: request.auth.audiences, values: [guest]}]}]}\n",
        );
        let m = Method::GET;
        let h = HeaderMap::new();
        let claims = |v: serde_json::Value| v.as_object().unwrap().clone();
        let check = |c: Option<&serde_json::Map<String, serde_json::Value>>| {
            let mut r = req(None, &m, "/", &h);
            r.http.as_mut().unwrap().jwt = c;
            a.evaluate(&r).allowed
        };
        let ok = claims(
            serde_json::json!({"iss": "https://idp/", "sub": "u1", "aud": ["api"], "realm": {"groups": ["dev", "admin"]}}),
        );
        assert!(check(Some(&ok)));
        assert!(!check(None), "no token: no request principal");
        let not_admin = claims(serde_json::json!({"iss": "https://idp/", "sub": "u1", "realm": {"groups": "dev"}}));
        assert!(!check(Some(&not_admin)));
        let other_iss =
            claims(serde_json::json!({"iss": "https://evil/", "sub": "u1", "realm": {"groups": ["admin"]}}));
        assert!(!check(Some(&other_iss)));
        let guest = claims(
            serde_json::json!({"iss": "https://idp/", "sub": "u1", "aud": "guest", "realm": {"groups": ["admin"]}}),
        );
        assert!(!check(Some(&guest)));
    }
}
