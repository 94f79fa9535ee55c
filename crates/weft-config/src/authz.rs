//! Authorization: the `authorization` block of an HTTP connection manager or a TCP proxy.
//!
//! Two ways to write it, both compiled to the same model (Envoy RBAC's policy trees):
//!
//! ```yaml
//! authorization:
//!   policies:                       # Istio AuthorizationPolicy semantics
//!     - name: ratings-viewer
//!       action: ALLOW               # ALLOW | DENY | AUDIT
//!       dry_run: false              # true: only logged and counted (shadow)
//!       rules:
//!         - from: [{principals: ["spiffe://cluster.local/ns/default/sa/reviews"], namespaces: [prod],
//!                   ip_blocks: [10.0.0.0/8], remote_ip_blocks: [...], not_principals: [...]}]
//!           to: [{methods: [GET], paths: [/ratings/*], ports: [9080], hosts: [ratings]}]
//!           when: [{key: "request.headers[x-user]", values: [admin]}]
//!   rbac:                           # Envoy RBAC filters, as xDS sends them (what `policies` compiles to)
//!     - rules: {action: ALLOW, policies: {name: {permissions: [...], principals: [...]}}}
//!       shadow_rules: {action: DENY, policies: {...}}
//! ```
//!
//! Istio's order is kept: every DENY policy before every ALLOW policy; once any ALLOW policy exists a
//! request none of them matches is denied. AUDIT policies never deny; a match is logged.

use crate::model::CidrRange;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::IpAddr;

// ---------------------------------------------------------------------------------------------
// Raw (YAML / xDS) form
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAuthorization {
    pub policies: Vec<RawAuthzPolicy>,
    pub rbac: Vec<RawRbac>,
}

/// One Istio-style policy.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAuthzPolicy {
    pub name: Option<String>,
    pub action: Option<String>,
    #[serde(alias = "dryRun")]
    pub dry_run: Option<bool>,
    pub rules: Vec<RawAuthzRule>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[cfg_attr(feature = "schemars", derive(Serialize, schemars::JsonSchema))]
#[serde(deny_unknown_fields, default)]
pub struct RawAuthzRule {
    pub from: Vec<RawAuthzSource>,
    pub to: Vec<RawAuthzOperation>,
    pub when: Vec<RawAuthzCondition>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[cfg_attr(feature = "schemars", derive(Serialize, schemars::JsonSchema))]
#[serde(deny_unknown_fields, default)]
pub struct RawAuthzSource {
    pub principals: Vec<String>,
    #[serde(alias = "notPrincipals")]
    pub not_principals: Vec<String>,
    /// JWT `iss/sub` of the request (Istio `requestPrincipals`); needs `jwt_authn`.
    #[serde(alias = "requestPrincipals")]
    pub request_principals: Vec<String>,
    #[serde(alias = "notRequestPrincipals")]
    pub not_request_principals: Vec<String>,
    pub namespaces: Vec<String>,
    #[serde(alias = "notNamespaces")]
    pub not_namespaces: Vec<String>,
    /// Matched against the direct peer's address.
    #[serde(alias = "ipBlocks")]
    pub ip_blocks: Vec<String>,
    #[serde(alias = "notIpBlocks")]
    pub not_ip_blocks: Vec<String>,
    /// Matched against the client address (`x-forwarded-for` when trusted).
    #[serde(alias = "remoteIpBlocks")]
    pub remote_ip_blocks: Vec<String>,
    #[serde(alias = "notRemoteIpBlocks")]
    pub not_remote_ip_blocks: Vec<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[cfg_attr(feature = "schemars", derive(Serialize, schemars::JsonSchema))]
#[serde(deny_unknown_fields, default)]
pub struct RawAuthzOperation {
    pub hosts: Vec<String>,
    #[serde(alias = "notHosts")]
    pub not_hosts: Vec<String>,
    pub ports: Vec<RawPort>,
    #[serde(alias = "notPorts")]
    pub not_ports: Vec<RawPort>,
    pub methods: Vec<String>,
    #[serde(alias = "notMethods")]
    pub not_methods: Vec<String>,
    pub paths: Vec<String>,
    #[serde(alias = "notPaths")]
    pub not_paths: Vec<String>,
}

/// A port as Istio writes it (`"9080"`) or as a number.
#[derive(Clone, Debug, Deserialize)]
#[cfg_attr(feature = "schemars", derive(Serialize))]
#[serde(untagged)]
pub enum RawPort {
    Number(u64),
    Text(String),
}

/// A number or a string: Kubernetes' `int-or-string`.
#[cfg(feature = "schemars")]
impl schemars::JsonSchema for RawPort {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "RawPort".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({ "x-kubernetes-int-or-string": true })
    }
}

#[derive(Clone, Debug, Default, Deserialize)]
#[cfg_attr(feature = "schemars", derive(Serialize, schemars::JsonSchema))]
#[serde(deny_unknown_fields, default)]
pub struct RawAuthzCondition {
    pub key: Option<String>,
    pub values: Vec<String>,
    #[serde(alias = "notValues")]
    pub not_values: Vec<String>,
}

/// One Envoy RBAC filter (`envoy.extensions.filters.http.rbac.v3.RBAC`).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawRbac {
    pub rules: Option<RawRbacRules>,
    pub shadow_rules: Option<RawRbacRules>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawRbacRules {
    /// ALLOW, DENY or LOG.
    pub action: Option<String>,
    pub policies: BTreeMap<String, RawRbacPolicy>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawRbacPolicy {
    pub permissions: Vec<RawPermission>,
    pub principals: Vec<RawPrincipal>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawPermissionSet {
    pub rules: Vec<RawPermission>,
}

/// Exactly one field is set.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawPermission {
    pub any: Option<bool>,
    pub and_rules: Option<RawPermissionSet>,
    pub or_rules: Option<RawPermissionSet>,
    pub not_rule: Option<Box<RawPermission>>,
    pub header: Option<RawRbacHeader>,
    pub url_path: Option<RawStrMatch>,
    pub destination_port: Option<u64>,
    pub destination_ip: Option<String>,
    pub requested_server_name: Option<RawStrMatch>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawPrincipalSet {
    pub ids: Vec<RawPrincipal>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAuthenticated {
    /// Absent: any authenticated peer.
    pub principal_name: Option<RawStrMatch>,
}

/// Exactly one field is set.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawPrincipal {
    pub any: Option<bool>,
    pub and_ids: Option<RawPrincipalSet>,
    pub or_ids: Option<RawPrincipalSet>,
    pub not_id: Option<Box<RawPrincipal>>,
    pub authenticated: Option<RawAuthenticated>,
    pub direct_remote_ip: Option<String>,
    pub remote_ip: Option<String>,
    pub header: Option<RawRbacHeader>,
    pub url_path: Option<RawStrMatch>,
    /// weft: the validated JWT's `iss/sub` (over xDS: Istio's `istio_authn` metadata matcher on
    /// `request.auth.principal`); no `principal_name`: any valid token.
    pub request_principal: Option<RawAuthenticated>,
    /// weft: a claim of the validated JWT (over xDS: a metadata matcher on `istio_authn`'s
    /// `request.auth.claims` or on `envoy.filters.http.jwt_authn`'s payload).
    pub request_claim: Option<RawRequestClaim>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawRequestClaim {
    /// The claim, then nested keys.
    pub path: Vec<String>,
    /// Absent: the claim is present.
    pub value: Option<RawStrMatch>,
}

/// Envoy's `StringMatcher`: exactly one of exact, prefix, suffix, contains, safe_regex.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawStrMatch {
    pub exact: Option<String>,
    pub prefix: Option<String>,
    pub suffix: Option<String>,
    pub contains: Option<String>,
    pub safe_regex: Option<String>,
    pub ignore_case: Option<bool>,
}

/// Envoy's `HeaderMatcher` for RBAC (pseudo-headers `:method`, `:path`, `:authority` included).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawRbacHeader {
    pub name: Option<String>,
    pub exact: Option<String>,
    pub prefix: Option<String>,
    pub suffix: Option<String>,
    pub contains: Option<String>,
    pub safe_regex: Option<String>,
    pub present: Option<bool>,
    pub ignore_case: Option<bool>,
    pub invert: Option<bool>,
}

// ---------------------------------------------------------------------------------------------
// Model
// ---------------------------------------------------------------------------------------------

/// What a connection manager or TCP proxy enforces: stages evaluated in order; the first that
/// denies decides. Shadow stages only count and log.
#[derive(Clone, Debug, Serialize, PartialEq, Default)]
pub struct Authorization {
    pub stages: Vec<RbacStage>,
}

#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RbacAction {
    Allow,
    Deny,
    /// Istio's AUDIT (Envoy's LOG): a match is logged, never denies.
    Log,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct RbacStage {
    pub action: RbacAction,
    /// Envoy `shadow_rules` / Istio dry-run: evaluated, logged and counted, never enforced.
    pub shadow: bool,
    pub policies: Vec<RbacPolicy>,
}

/// Matches when any permission and any principal match.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct RbacPolicy {
    pub name: String,
    pub permissions: Vec<Permission>,
    pub principals: Vec<Principal>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum Permission {
    Any,
    And(Vec<Permission>),
    Or(Vec<Permission>),
    Not(Box<Permission>),
    Header(RbacHeader),
    UrlPath(StrMatch),
    DestinationPort(u16),
    DestinationIp(CidrRange),
    RequestedServerName(StrMatch),
}

#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum Principal {
    Any,
    And(Vec<Principal>),
    Or(Vec<Principal>),
    Not(Box<Principal>),
    /// An mTLS peer; `None`: any authenticated peer, else its principal (SPIFFE ID) must match.
    Authenticated(Option<StrMatch>),
    DirectRemoteIp(CidrRange),
    RemoteIp(CidrRange),
    Header(RbacHeader),
    UrlPath(StrMatch),
    /// The validated JWT's `iss/sub` (Istio `request.auth.principal`); `None`: any valid token.
    RequestPrincipal(Option<StrMatch>),
    /// A claim of the validated JWT (Istio `request.auth.claims[a][b]`): a string claim matches
    /// the rule, a list claim when any string element does; `None`: the claim is present.
    RequestClaim {
        path: Vec<String>,
        rule: Option<StrMatch>,
    },
}

#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum StrKind {
    Exact,
    Prefix,
    Suffix,
    Contains,
    Regex,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct StrMatch {
    pub kind: StrKind,
    pub value: String,
    pub ignore_case: bool,
}

impl StrMatch {
    pub fn new(kind: StrKind, value: impl Into<String>) -> StrMatch {
        StrMatch {
            kind,
            value: value.into(),
            ignore_case: false,
        }
    }
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct RbacHeader {
    /// Lowercase; `:method`, `:path`, `:authority` read the request line.
    pub name: String,
    /// `None`: present.
    pub rule: Option<StrMatch>,
    /// `present: false` (the header must be absent) is `rule: None, invert: true`.
    pub invert: bool,
}

// ---------------------------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------------------------

use crate::errors::ConfigError;

/// Validates an `authorization` block; `tcp` refuses HTTP-only matchers.
pub fn validate(path: &str, raw: &RawAuthorization, tcp: bool) -> (Option<Authorization>, ConfigError) {
    let mut errs = ConfigError::default();
    let mut stages = Vec::new();
    // Istio form: shadow stages first (they never decide), then DENY, ALLOW, AUDIT.
    let mut by_kind: BTreeMap<(bool, u8), Vec<RbacPolicy>> = BTreeMap::new();
    for (i, p) in raw.policies.iter().enumerate() {
        let pp = format!("{path}.policies[{i}]");
        let name = match p.name.as_deref() {
            Some(n) if !n.is_empty() => n.to_string(),
            _ => {
                errs.add(format!("{pp}.name"), "is required");
                continue;
            }
        };
        let (action, order) = match p.action.as_deref().unwrap_or("ALLOW") {
            "ALLOW" | "allow" => (RbacAction::Allow, 1),
            "DENY" | "deny" => (RbacAction::Deny, 0),
            "AUDIT" | "audit" | "LOG" | "log" => (RbacAction::Log, 2),
            o => {
                errs.add(
                    format!("{pp}.action"),
                    format!("unknown action \"{o}\" (ALLOW, DENY, AUDIT)"),
                );
                continue;
            }
        };
        let shadow = p.dry_run.unwrap_or(false);
        let policies = by_kind.entry((!shadow, order)).or_default();
        if p.rules.is_empty() && action != RbacAction::Allow {
            // Istio: a DENY/AUDIT policy without rules matches nothing.
            continue;
        }
        if p.rules.is_empty() {
            // Istio: an ALLOW policy without rules allows nothing (default-deny).
            continue;
        }
        for (j, r) in p.rules.iter().enumerate() {
            let rp = format!("{pp}.rules[{j}]");
            if let Some(pol) = istio_rule(&mut errs, &rp, &name, j, r, tcp) {
                policies.push(pol);
            }
        }
    }
    for ((enforced, order), policies) in by_kind {
        let action = match order {
            0 => RbacAction::Deny,
            1 => RbacAction::Allow,
            _ => RbacAction::Log,
        };
        stages.push(RbacStage {
            action,
            shadow: !enforced,
            policies,
        });
    }
    for (i, r) in raw.rbac.iter().enumerate() {
        let rp = format!("{path}.rbac[{i}]");
        if let Some(rules) = &r.rules {
            if let Some(s) = rbac_rules(&mut errs, &format!("{rp}.rules"), rules, false, tcp) {
                stages.push(s);
            }
        }
        if let Some(rules) = &r.shadow_rules {
            if let Some(s) = rbac_rules(&mut errs, &format!("{rp}.shadow_rules"), rules, true, tcp) {
                stages.push(s);
            }
        }
    }
    // Shadow stages first: they must see every request, including those a later stage denies.
    stages.sort_by_key(|s| !s.shadow);
    (errs.is_empty().then_some(Authorization { stages }), errs)
}

fn rbac_rules(errs: &mut ConfigError, path: &str, r: &RawRbacRules, shadow: bool, tcp: bool) -> Option<RbacStage> {
    let action = match r.action.as_deref().unwrap_or("ALLOW") {
        "ALLOW" => RbacAction::Allow,
        "DENY" => RbacAction::Deny,
        "LOG" => RbacAction::Log,
        o => {
            errs.add(
                format!("{path}.action"),
                format!("unknown action \"{o}\" (ALLOW, DENY, LOG)"),
            );
            return None;
        }
    };
    let mut policies = Vec::new();
    for (name, p) in &r.policies {
        let pp = format!("{path}.policies[{name}]");
        if p.permissions.is_empty() {
            errs.add(format!("{pp}.permissions"), "at least one is required");
        }
        if p.principals.is_empty() {
            errs.add(format!("{pp}.principals"), "at least one is required");
        }
        let permissions = p
            .permissions
            .iter()
            .enumerate()
            .filter_map(|(i, x)| permission(errs, &format!("{pp}.permissions[{i}]"), x, tcp))
            .collect();
        let principals = p
            .principals
            .iter()
            .enumerate()
            .filter_map(|(i, x)| principal(errs, &format!("{pp}.principals[{i}]"), x, tcp))
            .collect();
        policies.push(RbacPolicy {
            name: name.clone(),
            permissions,
            principals,
        });
    }
    Some(RbacStage {
        action,
        shadow,
        policies,
    })
}

fn one_of(errs: &mut ConfigError, path: &str, n: usize, what: &str) -> bool {
    if n != 1 {
        errs.add(path.to_string(), format!("exactly one of {what} must be set"));
        return false;
    }
    true
}

const PERMISSION_FIELDS: &str =
    "any, and_rules, or_rules, not_rule, header, url_path, destination_port, destination_ip, requested_server_name";
const PRINCIPAL_FIELDS: &str =
    "any, and_ids, or_ids, not_id, authenticated, direct_remote_ip, remote_ip, header, url_path, request_principal, request_claim";

fn http_only(errs: &mut ConfigError, path: &str, tcp: bool) -> bool {
    if tcp {
        errs.add(path.to_string(), "needs an HTTP request (not available on a TCP proxy)");
    }
    !tcp
}

fn permission(errs: &mut ConfigError, path: &str, p: &RawPermission, tcp: bool) -> Option<Permission> {
    let n = [
        p.any.is_some(),
        p.and_rules.is_some(),
        p.or_rules.is_some(),
        p.not_rule.is_some(),
        p.header.is_some(),
        p.url_path.is_some(),
        p.destination_port.is_some(),
        p.destination_ip.is_some(),
        p.requested_server_name.is_some(),
    ]
    .iter()
    .filter(|b| **b)
    .count();
    if !one_of(errs, path, n, PERMISSION_FIELDS) {
        return None;
    }
    let set = |errs: &mut ConfigError, f: &str, s: &RawPermissionSet| {
        s.rules
            .iter()
            .enumerate()
            .map(|(i, x)| permission(errs, &format!("{path}.{f}.rules[{i}]"), x, tcp))
            .collect::<Option<Vec<_>>>()
    };
    Some(if let Some(a) = p.any {
        if !a {
            errs.add(format!("{path}.any"), "must be true");
            return None;
        }
        Permission::Any
    } else if let Some(s) = &p.and_rules {
        Permission::And(set(errs, "and_rules", s)?)
    } else if let Some(s) = &p.or_rules {
        Permission::Or(set(errs, "or_rules", s)?)
    } else if let Some(x) = &p.not_rule {
        Permission::Not(Box::new(permission(errs, &format!("{path}.not_rule"), x, tcp)?))
    } else if let Some(h) = &p.header {
        let hp = format!("{path}.header");
        if !http_only(errs, &hp, tcp) {
            return None;
        }
        Permission::Header(header(errs, &hp, h)?)
    } else if let Some(m) = &p.url_path {
        let hp = format!("{path}.url_path");
        if !http_only(errs, &hp, tcp) {
            return None;
        }
        Permission::UrlPath(str_match(errs, &hp, m)?)
    } else if let Some(port) = p.destination_port {
        match u16::try_from(port) {
            Ok(v) => Permission::DestinationPort(v),
            Err(_) => {
                errs.add(format!("{path}.destination_port"), "must be at most 65535");
                return None;
            }
        }
    } else if let Some(c) = &p.destination_ip {
        Permission::DestinationIp(cidr(errs, &format!("{path}.destination_ip"), c)?)
    } else if let Some(m) = &p.requested_server_name {
        Permission::RequestedServerName(str_match(errs, &format!("{path}.requested_server_name"), m)?)
    } else {
        return None;
    })
}

fn principal(errs: &mut ConfigError, path: &str, p: &RawPrincipal, tcp: bool) -> Option<Principal> {
    let n = [
        p.any.is_some(),
        p.and_ids.is_some(),
        p.or_ids.is_some(),
        p.not_id.is_some(),
        p.authenticated.is_some(),
        p.direct_remote_ip.is_some(),
        p.remote_ip.is_some(),
        p.header.is_some(),
        p.url_path.is_some(),
        p.request_principal.is_some(),
        p.request_claim.is_some(),
    ]
    .iter()
    .filter(|b| **b)
    .count();
    if !one_of(errs, path, n, PRINCIPAL_FIELDS) {
        return None;
    }
    let set = |errs: &mut ConfigError, f: &str, s: &RawPrincipalSet| {
        s.ids
            .iter()
            .enumerate()
            .map(|(i, x)| principal(errs, &format!("{path}.{f}.ids[{i}]"), x, tcp))
            .collect::<Option<Vec<_>>>()
    };
    Some(if let Some(a) = p.any {
        if !a {
            errs.add(format!("{path}.any"), "must be true");
            return None;
        }
        Principal::Any
    } else if let Some(s) = &p.and_ids {
        Principal::And(set(errs, "and_ids", s)?)
    } else if let Some(s) = &p.or_ids {
        Principal::Or(set(errs, "or_ids", s)?)
    } else if let Some(x) = &p.not_id {
        Principal::Not(Box::new(principal(errs, &format!("{path}.not_id"), x, tcp)?))
    } else if let Some(a) = &p.authenticated {
        match &a.principal_name {
            None => Principal::Authenticated(None),
            Some(m) => Principal::Authenticated(Some(str_match(
                errs,
                &format!("{path}.authenticated.principal_name"),
                m,
            )?)),
        }
    } else if let Some(c) = &p.direct_remote_ip {
        Principal::DirectRemoteIp(cidr(errs, &format!("{path}.direct_remote_ip"), c)?)
    } else if let Some(c) = &p.remote_ip {
        Principal::RemoteIp(cidr(errs, &format!("{path}.remote_ip"), c)?)
    } else if let Some(h) = &p.header {
        let hp = format!("{path}.header");
        if !http_only(errs, &hp, tcp) {
            return None;
        }
        Principal::Header(header(errs, &hp, h)?)
    } else if let Some(m) = &p.url_path {
        let hp = format!("{path}.url_path");
        if !http_only(errs, &hp, tcp) {
            return None;
        }
        Principal::UrlPath(str_match(errs, &hp, m)?)
    } else if let Some(a) = &p.request_principal {
        let hp = format!("{path}.request_principal");
        if !http_only(errs, &hp, tcp) {
            return None;
        }
        match &a.principal_name {
            None => Principal::RequestPrincipal(None),
            Some(m) => Principal::RequestPrincipal(Some(str_match(errs, &format!("{hp}.principal_name"), m)?)),
        }
    } else if let Some(c) = &p.request_claim {
        let hp = format!("{path}.request_claim");
        if !http_only(errs, &hp, tcp) {
            return None;
        }
        if c.path.is_empty() || c.path.iter().any(String::is_empty) {
            errs.add(
                format!("{hp}.path"),
                "needs the claim's name (then nested keys), none empty",
            );
            return None;
        }
        let rule = match &c.value {
            None => None,
            Some(m) => Some(str_match(errs, &format!("{hp}.value"), m)?),
        };
        Principal::RequestClaim {
            path: c.path.clone(),
            rule,
        }
    } else {
        return None;
    })
}

fn str_match(errs: &mut ConfigError, path: &str, m: &RawStrMatch) -> Option<StrMatch> {
    let set: Vec<(StrKind, &String)> = [
        (StrKind::Exact, &m.exact),
        (StrKind::Prefix, &m.prefix),
        (StrKind::Suffix, &m.suffix),
        (StrKind::Contains, &m.contains),
        (StrKind::Regex, &m.safe_regex),
    ]
    .into_iter()
    .filter_map(|(k, v)| v.as_ref().map(|v| (k, v)))
    .collect();
    if !one_of(errs, path, set.len(), "exact, prefix, suffix, contains, safe_regex") {
        return None;
    }
    let (kind, value) = set.into_iter().next()?;
    if kind == StrKind::Regex {
        if let Err(e) = regex::Regex::new(&format!("^(?:{value})$")) {
            errs.add(format!("{path}.safe_regex"), format!("invalid regex: {e}"));
            return None;
        }
    }
    Some(StrMatch {
        kind,
        value: value.clone(),
        ignore_case: m.ignore_case.unwrap_or(false),
    })
}

fn header(errs: &mut ConfigError, path: &str, h: &RawRbacHeader) -> Option<RbacHeader> {
    let name = match h.name.as_deref() {
        Some(n) if !n.is_empty() && http::HeaderName::from_bytes(n.trim_start_matches(':').as_bytes()).is_ok() => {
            n.to_ascii_lowercase()
        }
        Some(n) => {
            errs.add(format!("{path}.name"), format!("\"{n}\" is not a header name"));
            return None;
        }
        None => {
            errs.add(format!("{path}.name"), "is required");
            return None;
        }
    };
    let invert = h.invert.unwrap_or(false);
    if let Some(p) = h.present {
        if h.exact.is_some()
            || h.prefix.is_some()
            || h.suffix.is_some()
            || h.contains.is_some()
            || h.safe_regex.is_some()
        {
            errs.add(path.to_string(), "present cannot be combined with a value match");
            return None;
        }
        return Some(RbacHeader {
            name,
            rule: None,
            invert: invert == p,
        });
    }
    let m = RawStrMatch {
        exact: h.exact.clone(),
        prefix: h.prefix.clone(),
        suffix: h.suffix.clone(),
        contains: h.contains.clone(),
        safe_regex: h.safe_regex.clone(),
        ignore_case: h.ignore_case,
    };
    Some(RbacHeader {
        name,
        rule: Some(str_match(errs, path, &m)?),
        invert,
    })
}

/// `10.0.0.0/8`, or an address alone (a host).
pub fn cidr(errs: &mut ConfigError, path: &str, s: &str) -> Option<CidrRange> {
    let (addr, len) = match s.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (s, None),
    };
    let Ok(address) = addr.parse::<IpAddr>() else {
        errs.add(
            path.to_string(),
            format!("\"{s}\" is not an IP prefix (e.g. 10.0.0.0/8)"),
        );
        return None;
    };
    let max = if address.is_ipv4() { 32 } else { 128 };
    let prefix_len = match len.map(str::parse::<u8>) {
        None => max,
        Some(Ok(n)) if n <= max => n,
        _ => {
            errs.add(path.to_string(), format!("\"{s}\" has an invalid prefix length"));
            return None;
        }
    };
    Some(CidrRange { address, prefix_len })
}

// ---------------------------------------------------------------------------------------------
// Istio rules → RBAC policies (also used by `weft control` to emit Envoy RBAC)
// ---------------------------------------------------------------------------------------------

/// Istio's string forms: `*` any (present), `x*` prefix, `*x` suffix, else exact.
pub fn istio_str(v: &str) -> Option<StrMatch> {
    if v == "*" {
        None
    } else if let Some(p) = v.strip_suffix('*') {
        Some(StrMatch::new(StrKind::Prefix, p))
    } else if let Some(s) = v.strip_prefix('*') {
        Some(StrMatch::new(StrKind::Suffix, s))
    } else {
        Some(StrMatch::new(StrKind::Exact, v))
    }
}

fn any_of<T>(mut v: Vec<T>, or: fn(Vec<T>) -> T) -> T {
    if v.len() == 1 {
        v.pop().expect("one element")
    } else {
        or(v)
    }
}

/// The RBAC policy of one Istio rule: named `<policy>[<rule>]` (Istio: `ns[..]-policy[..]-rule[..]`).
pub fn istio_rule(
    errs: &mut ConfigError,
    path: &str,
    name: &str,
    index: usize,
    r: &RawAuthzRule,
    tcp: bool,
) -> Option<RbacPolicy> {
    let before = errs.len();
    // principals: any of the `from` entries, each an AND of its fields.
    let mut principals = Vec::new();
    for (k, f) in r.from.iter().enumerate() {
        let fp = format!("{path}.from[{k}]");
        let mut and: Vec<Principal> = Vec::new();
        let spiffe = |v: &String| Principal::Authenticated(istio_str(v));
        let ns = |v: &String| match v.as_str() {
            "*" => Principal::Authenticated(None),
            v => Principal::Authenticated(Some(StrMatch::new(StrKind::Contains, format!("/ns/{v}/")))),
        };
        let mut field = |list: &[String], not: bool, f: &dyn Fn(&String) -> Option<Principal>| {
            if list.is_empty() {
                return;
            }
            let ids: Vec<Principal> = list.iter().filter_map(f).collect();
            let p = any_of(ids, Principal::Or);
            and.push(if not { Principal::Not(Box::new(p)) } else { p });
        };
        field(&f.principals, false, &|v| Some(spiffe(v)));
        field(&f.not_principals, true, &|v| Some(spiffe(v)));
        field(&f.namespaces, false, &|v| Some(ns(v)));
        field(&f.not_namespaces, true, &|v| Some(ns(v)));
        let req_principal = |v: &String| Some(Principal::RequestPrincipal(istio_str(v)));
        field(&f.request_principals, false, &req_principal);
        field(&f.not_request_principals, true, &req_principal);
        let mut ip = |list: &[String], not: bool, remote: bool, fld: &str| {
            if list.is_empty() {
                return;
            }
            let ids: Vec<Principal> = list
                .iter()
                .enumerate()
                .filter_map(|(i, c)| cidr(errs, &format!("{fp}.{fld}[{i}]"), c))
                .map(|c| {
                    if remote {
                        Principal::RemoteIp(c)
                    } else {
                        Principal::DirectRemoteIp(c)
                    }
                })
                .collect();
            if ids.is_empty() {
                return;
            }
            let p = any_of(ids, Principal::Or);
            and.push(if not { Principal::Not(Box::new(p)) } else { p });
        };
        ip(&f.ip_blocks, false, false, "ip_blocks");
        ip(&f.not_ip_blocks, true, false, "not_ip_blocks");
        ip(&f.remote_ip_blocks, false, true, "remote_ip_blocks");
        ip(&f.not_remote_ip_blocks, true, true, "not_remote_ip_blocks");
        if and.is_empty() {
            errs.add(fp, "needs at least one field");
            continue;
        }
        principals.push(any_of(and, Principal::And));
    }
    // when: conditions are ANDed onto every principal.
    let mut conditions = Vec::new();
    for (k, c) in r.when.iter().enumerate() {
        if let Some(p) = condition(errs, &format!("{path}.when[{k}]"), c, tcp) {
            conditions.push(p);
        }
    }
    if principals.is_empty() {
        principals.push(Principal::Any);
    }
    if !conditions.is_empty() {
        principals = principals
            .into_iter()
            .map(|p| {
                let mut v = vec![p];
                v.extend(conditions.iter().cloned());
                Principal::And(v)
            })
            .collect();
    }
    let mut permissions = Vec::new();
    for (k, t) in r.to.iter().enumerate() {
        let tp = format!("{path}.to[{k}]");
        let mut and: Vec<Permission> = Vec::new();
        let http_fields = [
            (&t.hosts, "hosts"),
            (&t.not_hosts, "not_hosts"),
            (&t.methods, "methods"),
            (&t.not_methods, "not_methods"),
            (&t.paths, "paths"),
            (&t.not_paths, "not_paths"),
        ];
        if tcp {
            for (l, f) in http_fields {
                if !l.is_empty() {
                    errs.add(
                        format!("{tp}.{f}"),
                        "needs an HTTP request (not available on a TCP proxy)",
                    );
                }
            }
        }
        let mut field = |list: &[String], not: bool, f: &dyn Fn(&String) -> Permission| {
            if list.is_empty() {
                return;
            }
            let p = any_of(list.iter().map(f).collect(), Permission::Or);
            and.push(if not { Permission::Not(Box::new(p)) } else { p });
        };
        let host = |v: &String| {
            Permission::Header(RbacHeader {
                name: ":authority".into(),
                rule: istio_str(v).map(|mut m| {
                    m.ignore_case = true;
                    m
                }),
                invert: false,
            })
        };
        let method = |v: &String| {
            Permission::Header(RbacHeader {
                name: ":method".into(),
                rule: Some(StrMatch::new(StrKind::Exact, v.clone())),
                invert: false,
            })
        };
        let url = |v: &String| match istio_str(v) {
            Some(m) => Permission::UrlPath(m),
            None => Permission::Any,
        };
        field(&t.hosts, false, &host);
        field(&t.not_hosts, true, &host);
        field(&t.methods, false, &method);
        field(&t.not_methods, true, &method);
        field(&t.paths, false, &url);
        field(&t.not_paths, true, &url);
        let mut port = |list: &[RawPort], not: bool, fld: &str| {
            if list.is_empty() {
                return;
            }
            let mut ps = Vec::new();
            for (i, p) in list.iter().enumerate() {
                let n = match p {
                    RawPort::Number(n) => u16::try_from(*n).ok(),
                    RawPort::Text(t) => t.parse::<u16>().ok(),
                };
                match n {
                    Some(v) if v > 0 => ps.push(Permission::DestinationPort(v)),
                    _ => errs.add(format!("{tp}.{fld}[{i}]"), "must be a port (1-65535)"),
                }
            }
            if ps.is_empty() {
                return;
            }
            let p = any_of(ps, Permission::Or);
            and.push(if not { Permission::Not(Box::new(p)) } else { p });
        };
        port(&t.ports, false, "ports");
        port(&t.not_ports, true, "not_ports");
        if and.is_empty() {
            errs.add(tp, "needs at least one field");
            continue;
        }
        permissions.push(any_of(and, Permission::And));
    }
    if permissions.is_empty() {
        permissions.push(Permission::Any);
    }
    (errs.len() == before).then(|| RbacPolicy {
        name: format!("{name}[{index}]"),
        permissions,
        principals,
    })
}

/// `request.auth.claims[a][b]` → `[a, b]` (None: not of that form, or an empty name).
pub fn claim_keys(key: &str) -> Option<Vec<String>> {
    let mut rest = key.strip_prefix("request.auth.claims")?;
    let mut out = Vec::new();
    while !rest.is_empty() {
        let inner = rest.strip_prefix('[')?;
        let end = inner.find(']')?;
        let name = &inner[..end];
        if name.is_empty() || name.contains('[') {
            return None;
        }
        out.push(name.to_string());
        rest = &inner[end + 1..];
    }
    (!out.is_empty()).then_some(out)
}

/// How one `when` value becomes a principal (None: the value is invalid).
type ValueToPrincipal = dyn Fn(&str) -> Option<Principal>;

/// A `when` condition: `request.headers[...]`, `source.ip`, `remote.ip`, `source.principal`,
/// `source.namespace`, and the validated JWT's `request.auth.principal` (`iss/sub`),
/// `request.auth.audiences`, `request.auth.presenter` and `request.auth.claims[a][b]`; any other
/// key is refused rather than ignored.
fn condition(errs: &mut ConfigError, path: &str, c: &RawAuthzCondition, tcp: bool) -> Option<Principal> {
    let Some(key) = c.key.as_deref() else {
        errs.add(format!("{path}.key"), "is required");
        return None;
    };
    if c.values.is_empty() && c.not_values.is_empty() {
        errs.add(path.to_string(), "values or not_values is required");
        return None;
    }
    let one: Box<ValueToPrincipal> = if let Some(h) =
        key.strip_prefix("request.headers[").and_then(|k| k.strip_suffix(']'))
    {
        if tcp {
            errs.add(
                format!("{path}.key"),
                "needs an HTTP request (not available on a TCP proxy)",
            );
            return None;
        }
        let name = h.to_ascii_lowercase();
        Box::new(move |v: &str| {
            Some(Principal::Header(RbacHeader {
                name: name.clone(),
                rule: istio_str(v),
                invert: false,
            }))
        })
    } else {
        match key {
            "source.principal" => Box::new(|v: &str| Some(Principal::Authenticated(istio_str(v)))),
            "source.namespace" => Box::new(|v: &str| {
                Some(Principal::Authenticated(Some(StrMatch::new(
                    StrKind::Contains,
                    format!("/ns/{v}/"),
                ))))
            }),
            "source.ip" | "remote.ip" => {
                let remote = key == "remote.ip";
                Box::new(move |v: &str| {
                    cidr(&mut ConfigError::default(), "", v).map(|c| {
                        if remote {
                            Principal::RemoteIp(c)
                        } else {
                            Principal::DirectRemoteIp(c)
                        }
                    })
                })
            }
            k if k.starts_with("request.auth.") => {
                if tcp {
                    errs.add(
                        format!("{path}.key"),
                        "needs an HTTP request (not available on a TCP proxy)",
                    );
                    return None;
                }
                let claim_path: Vec<String> = match k {
                    // Empty: the principal itself, not a claim.
                    "request.auth.principal" => Vec::new(),
                    "request.auth.audiences" => vec!["aud".into()],
                    "request.auth.presenter" => vec!["azp".into()],
                    k => match claim_keys(k) {
                        Some(p) => p,
                        None => {
                            errs.add(format!("{path}.key"), format!("unsupported key \"{k}\" (request.auth.principal, request.auth.audiences, request.auth.presenter, request.auth.claims[NAME][NESTED]...)"));
                            return None;
                        }
                    },
                };
                if claim_path.is_empty() {
                    Box::new(|v: &str| Some(Principal::RequestPrincipal(istio_str(v))))
                } else {
                    Box::new(move |v: &str| {
                        Some(Principal::RequestClaim {
                            path: claim_path.clone(),
                            rule: istio_str(v),
                        })
                    })
                }
            }
            k => {
                errs.add(format!("{path}.key"), format!("unsupported key \"{k}\" (request.headers[NAME], source.ip, remote.ip, source.principal, source.namespace, request.auth.principal, request.auth.audiences, request.auth.presenter, request.auth.claims[NAME])"));
                return None;
            }
        }
    };
    let mut and = Vec::new();
    if !c.values.is_empty() {
        let vs: Vec<Principal> = c.values.iter().filter_map(|v| one(v)).collect();
        if vs.len() != c.values.len() {
            errs.add(format!("{path}.values"), "invalid value");
            return None;
        }
        and.push(any_of(vs, Principal::Or));
    }
    if !c.not_values.is_empty() {
        let vs: Vec<Principal> = c.not_values.iter().filter_map(|v| one(v)).collect();
        if vs.len() != c.not_values.len() {
            errs.add(format!("{path}.not_values"), "invalid value");
            return None;
        }
        and.push(Principal::Not(Box::new(any_of(vs, Principal::Or))));
    }
    Some(any_of(and, Principal::And))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str, tcp: bool) -> (Option<Authorization>, ConfigError) {
        let raw: RawAuthorization = serde_saphyr::from_str(yaml).unwrap();
        validate("a", &raw, tcp)
    }

    #[test]
    fn istio_policies_become_ordered_stages() {
        let (a, e) = parse(
            "policies:\n- {name: allow, action: ALLOW, rules: [{from: [{principals: ['spiffe://td/ns/x/sa/y']}], to: [{methods: [GET], paths: ['/a*']}]}]}\n- {name: deny, action: DENY, rules: [{from: [{namespaces: [bad]}]}]}\n- {name: shadow, action: DENY, dry_run: true, rules: [{to: [{ports: [80]}]}]}\n",
            false,
        );
        assert!(e.is_empty(), "{e:?}");
        let a = a.unwrap();
        let kinds: Vec<_> = a.stages.iter().map(|s| (s.action, s.shadow)).collect();
        assert_eq!(
            kinds,
            vec![
                (RbacAction::Deny, true),
                (RbacAction::Deny, false),
                (RbacAction::Allow, false)
            ]
        );
        assert_eq!(a.stages[2].policies[0].name, "allow[0]");
    }

    #[test]
    fn errors_name_the_field() {
        let (_, e) = parse(
            "rbac:\n- rules: {action: ALLOW, policies: {p: {permissions: [{any: true, url_path: {exact: /}}], principals: [{remote_ip: 10.0.0.0/99}]}}}\n",
            false,
        );
        let paths: Vec<_> = e.errors.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "a.rbac[0].rules.policies[p].permissions[0]",
                "a.rbac[0].rules.policies[p].principals[0].remote_ip"
            ]
        );
        let (_, e) = parse(
            "policies: [{name: j, rules: [{when: [{key: 'request.auth.claims[]', values: [x]}]}]}]",
            false,
        );
        assert_eq!(e.errors[0].path, "a.policies[0].rules[0].when[0].key");
        let (_, e) = parse(
            "policies: [{name: j, rules: [{when: [{key: 'request.auth.claims[iss]', values: [x]}]}]}]",
            true,
        );
        assert_eq!(e.errors[0].path, "a.policies[0].rules[0].when[0].key");
        let (_, e) = parse("policies: [{name: t, rules: [{to: [{paths: [/x]}]}]}]", true);
        assert_eq!(e.errors[0].path, "a.policies[0].rules[0].to[0].paths");
    }

    #[test]
    fn jwt_claims_and_request_principals() {
        let (a, e) = parse(
            "policies: [{name: j, rules: [{from: [{requestPrincipals: ['https://idp/*'], notRequestPrincipals: [x/y]}], when: [{key: 'request.auth.claims[realm][groups]', values: [admin]}, {key: request.auth.audiences, values: [api]}]}]}]",
            false,
        );
        assert!(e.is_empty(), "{e:?}");
        let p = &a.unwrap().stages[0].policies[0].principals[0];
        let Principal::And(v) = p else { panic!("{p:?}") };
        assert!(
            matches!(&v[0], Principal::And(x) if matches!(&x[0], Principal::RequestPrincipal(Some(m)) if m.kind == StrKind::Prefix))
        );
        assert_eq!(
            v[1],
            Principal::RequestClaim {
                path: vec!["realm".into(), "groups".into()],
                rule: Some(StrMatch::new(StrKind::Exact, "admin")),
            }
        );
        assert_eq!(claim_keys("request.auth.claims[a]"), Some(vec!["a".to_string()]));
        assert_eq!(claim_keys("request.auth.claims[a]x"), None);
        assert_eq!(claim_keys("request.auth.claims"), None);
    }
}
