//! Envoy RBAC filters (`envoy.filters.http.rbac`, `envoy.filters.network.rbac`) → weft's
//! `authorization` block ([`weft_config::authz::RawAuthorization`]).
//!
//! Every matcher kind weft cannot evaluate (metadata other than JWT claims, filter state, CEL conditions, matcher trees,
//! custom extensions, port ranges, audit loggers…) is refused with its field path: a policy is never
//! silently weakened.

// Deprecated Envoy fields (header matcher shorthands, `source_ip`, `metadata`) are still sent by
// real control planes, so they are read on purpose.
#![allow(deprecated)]

use weft_config::authz::*;
use weft_config::ConfigError;
use weft_xds_api::pb::envoy::config::core::v3 as core;
use weft_xds_api::pb::envoy::config::rbac::v3 as rbac;
use weft_xds_api::pb::envoy::config::route::v3 as rt;
use weft_xds_api::pb::envoy::extensions::filters::http::rbac::v3 as http_rbac;
use weft_xds_api::pb::envoy::extensions::filters::network::rbac::v3 as net_rbac;
use weft_xds_api::pb::envoy::r#type::matcher::v3 as matcher;

pub const HTTP_RBAC_NAME: &str = "envoy.filters.http.rbac";
pub const HTTP_RBAC_URL: &str = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC";
pub const NETWORK_RBAC_NAME: &str = "envoy.filters.network.rbac";
pub const NETWORK_RBAC_URL: &str = "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC";

/// One HTTP RBAC filter, as one more entry of `authorization.rbac`.
pub fn http(errs: &mut ConfigError, path: &str, r: &http_rbac::Rbac) -> RawRbac {
    if r.matcher.is_some() {
        errs.add(format!("{path}.matcher"), "unsupported (use rules)");
    }
    if r.shadow_matcher.is_some() {
        errs.add(format!("{path}.shadow_matcher"), "unsupported (use shadow_rules)");
    }
    RawRbac {
        rules: r.rules.as_ref().map(|x| rules(errs, &format!("{path}.rules"), x)),
        shadow_rules: r
            .shadow_rules
            .as_ref()
            .map(|x| rules(errs, &format!("{path}.shadow_rules"), x)),
    }
}

/// One network RBAC filter (before a tcp_proxy).
pub fn network(errs: &mut ConfigError, path: &str, r: &net_rbac::Rbac) -> RawRbac {
    if r.matcher.is_some() {
        errs.add(format!("{path}.matcher"), "unsupported (use rules)");
    }
    if r.shadow_matcher.is_some() {
        errs.add(format!("{path}.shadow_matcher"), "unsupported (use shadow_rules)");
    }
    if r.delay_deny.as_ref().is_some_and(|d| d.seconds > 0 || d.nanos > 0) {
        errs.add(format!("{path}.delay_deny"), "unsupported (weft closes at once)");
    }
    RawRbac {
        rules: r.rules.as_ref().map(|x| rules(errs, &format!("{path}.rules"), x)),
        shadow_rules: r
            .shadow_rules
            .as_ref()
            .map(|x| rules(errs, &format!("{path}.shadow_rules"), x)),
    }
}

fn rules(errs: &mut ConfigError, path: &str, r: &rbac::Rbac) -> RawRbacRules {
    if r.audit_logging_options.is_some() {
        errs.add(format!("{path}.audit_logging_options"), "unsupported");
    }
    let action = match r.action {
        0 => "ALLOW",
        1 => "DENY",
        2 => "LOG",
        v => {
            errs.add(format!("{path}.action"), format!("unknown value {v}"));
            "DENY"
        }
    };
    let mut policies = std::collections::BTreeMap::new();
    for (name, p) in &r.policies {
        let pp = format!("{path}.policies[{name}]");
        if p.condition.is_some() {
            errs.add(format!("{pp}.condition"), "unsupported (CEL)");
        }
        if p.checked_condition.is_some() {
            errs.add(format!("{pp}.checked_condition"), "unsupported (CEL)");
        }
        policies.insert(
            name.clone(),
            RawRbacPolicy {
                permissions: p
                    .permissions
                    .iter()
                    .enumerate()
                    .map(|(i, x)| permission(errs, &format!("{pp}.permissions[{i}]"), x))
                    .collect(),
                principals: p
                    .principals
                    .iter()
                    .enumerate()
                    .map(|(i, x)| principal(errs, &format!("{pp}.principals[{i}]"), x))
                    .collect(),
            },
        );
    }
    RawRbacRules {
        action: Some(action.into()),
        policies,
    }
}

fn permission(errs: &mut ConfigError, path: &str, p: &rbac::Permission) -> RawPermission {
    use rbac::permission::Rule as R;
    let mut out = RawPermission::default();
    let set = |errs: &mut ConfigError, f: &str, s: &rbac::permission::Set| RawPermissionSet {
        rules: s
            .rules
            .iter()
            .enumerate()
            .map(|(i, x)| permission(errs, &format!("{path}.{f}.rules[{i}]"), x))
            .collect(),
    };
    match &p.rule {
        None => errs.add(path, "a rule is required"),
        Some(R::Any(a)) => out.any = Some(*a),
        Some(R::AndRules(s)) => out.and_rules = Some(set(errs, "and_rules", s)),
        Some(R::OrRules(s)) => out.or_rules = Some(set(errs, "or_rules", s)),
        Some(R::NotRule(x)) => out.not_rule = Some(Box::new(permission(errs, &format!("{path}.not_rule"), x))),
        Some(R::Header(h)) => out.header = header(errs, &format!("{path}.header"), h),
        Some(R::UrlPath(m)) => out.url_path = path_matcher(errs, &format!("{path}.url_path"), m),
        Some(R::DestinationIp(c)) => out.destination_ip = Some(cidr(c)),
        Some(R::DestinationPort(v)) => out.destination_port = Some(u64::from(*v)),
        Some(R::RequestedServerName(m)) => {
            out.requested_server_name = string_matcher(errs, &format!("{path}.requested_server_name"), m)
        }
        Some(R::DestinationPortRange(_)) => errs.add(format!("{path}.destination_port_range"), "unsupported"),
        Some(R::Metadata(_)) => errs.add(format!("{path}.metadata"), "unsupported"),
        Some(R::Matcher(_)) => errs.add(format!("{path}.matcher"), "unsupported"),
        Some(R::UriTemplate(_)) => errs.add(format!("{path}.uri_template"), "unsupported"),
        Some(R::SourcedMetadata(_)) => errs.add(format!("{path}.sourced_metadata"), "unsupported"),
    }
    out
}

fn principal(errs: &mut ConfigError, path: &str, p: &rbac::Principal) -> RawPrincipal {
    use rbac::principal::Identifier as I;
    let mut out = RawPrincipal::default();
    let set = |errs: &mut ConfigError, f: &str, s: &rbac::principal::Set| RawPrincipalSet {
        ids: s
            .ids
            .iter()
            .enumerate()
            .map(|(i, x)| principal(errs, &format!("{path}.{f}.ids[{i}]"), x))
            .collect(),
    };
    match &p.identifier {
        None => errs.add(path, "an identifier is required"),
        Some(I::Any(a)) => out.any = Some(*a),
        Some(I::AndIds(s)) => out.and_ids = Some(set(errs, "and_ids", s)),
        Some(I::OrIds(s)) => out.or_ids = Some(set(errs, "or_ids", s)),
        Some(I::NotId(x)) => out.not_id = Some(Box::new(principal(errs, &format!("{path}.not_id"), x))),
        Some(I::Authenticated(a)) => {
            out.authenticated = Some(RawAuthenticated {
                principal_name: a
                    .principal_name
                    .as_ref()
                    .and_then(|m| string_matcher(errs, &format!("{path}.authenticated.principal_name"), m)),
            })
        }
        // `source_ip` (deprecated) is the downstream connection's address, as `direct_remote_ip`.
        Some(I::SourceIp(c)) | Some(I::DirectRemoteIp(c)) => out.direct_remote_ip = Some(cidr(c)),
        Some(I::RemoteIp(c)) => out.remote_ip = Some(cidr(c)),
        Some(I::Header(h)) => out.header = header(errs, &format!("{path}.header"), h),
        Some(I::UrlPath(m)) => out.url_path = path_matcher(errs, &format!("{path}.url_path"), m),
        Some(I::Metadata(m)) => {
            if let Some(p) = jwt_metadata(errs, &format!("{path}.metadata"), m) {
                out = p;
            }
        }
        Some(I::FilterState(_)) => errs.add(format!("{path}.filter_state"), "unsupported"),
        Some(I::SourcedMetadata(s)) => {
            let sp = format!("{path}.sourced_metadata");
            match &s.metadata_matcher {
                // 0: DYNAMIC (what an authentication filter wrote); ROUTE metadata is not kept.
                Some(m) if s.metadata_source == 0 => {
                    if let Some(p) = jwt_metadata(errs, &format!("{sp}.metadata_matcher"), m) {
                        out = p;
                    }
                }
                Some(_) => errs.add(format!("{sp}.metadata_source"), "only DYNAMIC is supported"),
                None => errs.add(format!("{sp}.metadata_matcher"), "is required"),
            }
        }
        Some(I::Custom(_)) => errs.add(format!("{path}.custom"), "unsupported"),
    }
    out
}

/// JWT metadata principals: Istio's (`istio_authn`: `request.auth.principal`, or
/// `request.auth.claims` then the claim path) and Envoy's own (`envoy.filters.http.jwt_authn`: the
/// `payload_in_metadata` key, then the claim path). Any other metadata is refused.
fn jwt_metadata(errs: &mut ConfigError, path: &str, m: &matcher::MetadataMatcher) -> Option<RawPrincipal> {
    use matcher::metadata_matcher::path_segment::Segment;
    let keys: Vec<&str> = m
        .path
        .iter()
        .map(|s| match &s.segment {
            Some(Segment::Key(k)) => k.as_str(),
            None => "",
        })
        .collect();
    let claim: Option<Vec<String>> = match (m.filter.as_str(), keys.as_slice()) {
        ("istio_authn", ["request.auth.principal"]) => None,
        ("istio_authn", ["request.auth.claims", rest @ ..]) if !rest.is_empty() => {
            Some(rest.iter().map(|k| k.to_string()).collect())
        }
        ("envoy.filters.http.jwt_authn", [_, rest @ ..]) if !rest.is_empty() => {
            Some(rest.iter().map(|k| k.to_string()).collect())
        }
        _ => {
            errs.add(
                path,
                "unsupported: only JWT metadata (istio_authn request.auth.principal / request.auth.claims, or envoy.filters.http.jwt_authn's payload) is understood",
            );
            return None;
        }
    };
    use matcher::value_matcher::MatchPattern as V;
    let vp = format!("{path}.value");
    // A claim matcher may wrap its string matcher in a list matcher (Istio does: any element).
    let mut v = m.value.as_ref().and_then(|v| v.match_pattern.as_ref());
    if let Some(V::ListMatch(l)) = v {
        v = match &l.match_pattern {
            Some(matcher::list_matcher::MatchPattern::OneOf(x)) => x.match_pattern.as_ref(),
            None => None,
        };
    }
    let value = match v {
        Some(V::StringMatch(s)) => Some(string_matcher(errs, &vp, s)?),
        Some(V::PresentMatch(true)) => None,
        _ => {
            errs.add(
                &vp,
                "only string_match, present_match or list_match.one_of of those are supported",
            );
            return None;
        }
    };
    let p = match claim {
        None => RawPrincipal {
            request_principal: Some(RawAuthenticated { principal_name: value }),
            ..Default::default()
        },
        Some(path) => RawPrincipal {
            request_claim: Some(weft_config::authz::RawRequestClaim { path, value }),
            ..Default::default()
        },
    };
    Some(if m.invert {
        RawPrincipal {
            not_id: Some(Box::new(p)),
            ..Default::default()
        }
    } else {
        p
    })
}

fn cidr(c: &core::CidrRange) -> String {
    match &c.prefix_len {
        Some(l) => format!("{}/{}", c.address_prefix, l.value),
        None => c.address_prefix.clone(),
    }
}

fn string_matcher(errs: &mut ConfigError, path: &str, m: &matcher::StringMatcher) -> Option<RawStrMatch> {
    use matcher::string_matcher::MatchPattern as P;
    let mut out = RawStrMatch {
        ignore_case: Some(m.ignore_case),
        ..RawStrMatch::default()
    };
    match &m.match_pattern {
        Some(P::Exact(v)) => out.exact = Some(v.clone()),
        Some(P::Prefix(v)) => out.prefix = Some(v.clone()),
        Some(P::Suffix(v)) => out.suffix = Some(v.clone()),
        Some(P::Contains(v)) => out.contains = Some(v.clone()),
        Some(P::SafeRegex(r)) => out.safe_regex = Some(r.regex.clone()),
        Some(P::Custom(_)) => {
            errs.add(format!("{path}.custom"), "unsupported");
            return None;
        }
        None => {
            errs.add(path, "a match pattern is required");
            return None;
        }
    }
    Some(out)
}

fn path_matcher(errs: &mut ConfigError, path: &str, m: &matcher::PathMatcher) -> Option<RawStrMatch> {
    match &m.rule {
        Some(matcher::path_matcher::Rule::Path(s)) => string_matcher(errs, &format!("{path}.path"), s),
        None => {
            errs.add(format!("{path}.path"), "is required");
            None
        }
    }
}

fn header(errs: &mut ConfigError, path: &str, h: &rt::HeaderMatcher) -> Option<RawRbacHeader> {
    use rt::header_matcher::HeaderMatchSpecifier as S;
    if h.treat_missing_header_as_empty {
        errs.add(format!("{path}.treat_missing_header_as_empty"), "unsupported");
    }
    let mut out = RawRbacHeader {
        name: Some(h.name.clone()),
        invert: Some(h.invert_match),
        ..RawRbacHeader::default()
    };
    match &h.header_match_specifier {
        Some(S::ExactMatch(v)) => out.exact = Some(v.clone()),
        Some(S::PrefixMatch(v)) => out.prefix = Some(v.clone()),
        Some(S::SuffixMatch(v)) => out.suffix = Some(v.clone()),
        Some(S::ContainsMatch(v)) => out.contains = Some(v.clone()),
        Some(S::SafeRegexMatch(r)) => out.safe_regex = Some(r.regex.clone()),
        Some(S::PresentMatch(p)) => out.present = Some(*p),
        Some(S::StringMatch(m)) => {
            let s = string_matcher(errs, &format!("{path}.string_match"), m)?;
            out.exact = s.exact;
            out.prefix = s.prefix;
            out.suffix = s.suffix;
            out.contains = s.contains;
            out.safe_regex = s.safe_regex;
            out.ignore_case = s.ignore_case;
        }
        Some(S::RangeMatch(_)) => {
            errs.add(format!("{path}.range_match"), "unsupported");
            return None;
        }
        // Envoy: no specifier means "present".
        None => out.present = Some(true),
    }
    Some(out)
}
