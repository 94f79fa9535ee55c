//! Mesh authorization policies → Envoy RBAC HTTP filters on a sidecar's inbound listener.
//!
//! Each policy is validated and compiled alone when its registry file is read (into
//! [`weft_config::authz::Authorization`] stages); the policies selecting one proxy are merged here
//! (shadow first, then DENY, ALLOW, AUDIT, as Istio orders its filters) and each stage becomes one
//! `envoy.filters.http.rbac` filter, so a real Envoy and a weft sidecar enforce the same thing.

use crate::model::World;
use weft_config::authz::{Authorization, Permission, Principal, RbacAction, RbacHeader, RbacStage, StrKind, StrMatch};
use weft_config::CidrRange;
use weft_xds_api::pb::envoy::config::core::v3 as core;
use weft_xds_api::pb::envoy::config::rbac::v3 as rbac;
use weft_xds_api::pb::envoy::config::route::v3 as rt;
use weft_xds_api::pb::envoy::extensions::filters::http::rbac::v3 as http_rbac;
use weft_xds_api::pb::envoy::r#type::matcher::v3 as matcher;
use weft_xds_api::pb::google::protobuf::UInt32Value;

pub const RBAC_FILTER: &str = "envoy.filters.http.rbac";
pub const RBAC_URL: &str = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC";

/// The merged authorization of the sidecar of `service` in `namespace`; `None` when no policy
/// selects it.
pub fn authorization_for(world: &World, service: &str, namespace: &str) -> Option<Authorization> {
    let mut merged: Vec<RbacStage> = Vec::new();
    for p in world.authorization.iter().filter(|p| p.selects(service, namespace)) {
        for s in &p.compiled.stages {
            match merged.iter_mut().find(|m| m.action == s.action && m.shadow == s.shadow) {
                Some(m) => m.policies.extend(s.policies.iter().cloned()),
                None => merged.push(s.clone()),
            }
        }
    }
    if merged.is_empty() && !world.authorization.iter().any(|p| p.selects(service, namespace)) {
        return None;
    }
    let rank = |s: &RbacStage| {
        (
            !s.shadow,
            match s.action {
                RbacAction::Deny => 0,
                RbacAction::Allow => 1,
                RbacAction::Log => 2,
            },
        )
    };
    merged.sort_by_key(rank);
    Some(Authorization { stages: merged })
}

/// One non-optional RBAC filter per stage (a proxy that cannot enforce a policy must refuse it).
pub fn rbac_filters(
    a: &Authorization,
) -> Vec<weft_xds_api::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpFilter> {
    use weft_xds_api::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
    a.stages
        .iter()
        .map(|s| {
            let rules = rules(s);
            let cfg = if s.shadow {
                http_rbac::Rbac {
                    shadow_rules: Some(rules),
                    shadow_rules_stat_prefix: "shadow_".into(),
                    ..Default::default()
                }
            } else {
                http_rbac::Rbac {
                    rules: Some(rules),
                    ..Default::default()
                }
            };
            hcm::HttpFilter {
                name: RBAC_FILTER.into(),
                is_optional: false,
                config_type: Some(hcm::http_filter::ConfigType::TypedConfig(weft_xds_api::pack(
                    RBAC_URL, &cfg,
                ))),
                ..Default::default()
            }
        })
        .collect()
}

pub fn rules(s: &RbacStage) -> rbac::Rbac {
    rbac::Rbac {
        action: match s.action {
            RbacAction::Allow => rbac::rbac::Action::Allow as i32,
            RbacAction::Deny => rbac::rbac::Action::Deny as i32,
            RbacAction::Log => rbac::rbac::Action::Log as i32,
        },
        policies: s
            .policies
            .iter()
            .map(|p| {
                (
                    p.name.clone(),
                    rbac::Policy {
                        permissions: p.permissions.iter().map(permission).collect(),
                        principals: p.principals.iter().map(principal).collect(),
                        ..Default::default()
                    },
                )
            })
            .collect(),
        ..Default::default()
    }
}

fn permission(p: &Permission) -> rbac::Permission {
    use rbac::permission::{Rule as R, Set};
    let set = |v: &[Permission]| Set {
        rules: v.iter().map(permission).collect(),
    };
    rbac::Permission {
        rule: Some(match p {
            Permission::Any => R::Any(true),
            Permission::And(v) => R::AndRules(set(v)),
            Permission::Or(v) => R::OrRules(set(v)),
            Permission::Not(x) => R::NotRule(Box::new(permission(x))),
            Permission::Header(h) => R::Header(header(h)),
            Permission::UrlPath(m) => R::UrlPath(path(m)),
            Permission::DestinationPort(v) => R::DestinationPort(u32::from(*v)),
            Permission::DestinationIp(c) => R::DestinationIp(cidr(c)),
            Permission::RequestedServerName(m) => R::RequestedServerName(string(m)),
        }),
    }
}

fn principal(p: &Principal) -> rbac::Principal {
    use rbac::principal::{Authenticated, Identifier as I, Set};
    let set = |v: &[Principal]| Set {
        ids: v.iter().map(principal).collect(),
    };
    rbac::Principal {
        identifier: Some(match p {
            Principal::Any => I::Any(true),
            Principal::And(v) => I::AndIds(set(v)),
            Principal::Or(v) => I::OrIds(set(v)),
            Principal::Not(x) => I::NotId(Box::new(principal(x))),
            Principal::Authenticated(m) => I::Authenticated(Authenticated {
                principal_name: m.as_ref().map(string),
            }),
            Principal::DirectRemoteIp(c) => I::DirectRemoteIp(cidr(c)),
            Principal::RemoteIp(c) => I::RemoteIp(cidr(c)),
            Principal::Header(h) => I::Header(header(h)),
            Principal::UrlPath(m) => I::UrlPath(path(m)),
            // JWT principals as Istio writes them for its Envoy (the `istio_authn` filter's metadata).
            Principal::RequestPrincipal(m) => I::SourcedMetadata(jwt_metadata(&[], m.as_ref())),
            Principal::RequestClaim { path, rule } => I::SourcedMetadata(jwt_metadata(path, rule.as_ref())),
        }),
    }
}

/// The filter whose dynamic metadata holds a validated JWT's principal and claims (Istio's).
pub const ISTIO_AUTHN: &str = "istio_authn";

/// An Istio-style metadata matcher: `request.auth.principal` (empty `claim`), or
/// `request.auth.claims` then the claim path, matching any element of a list claim.
fn jwt_metadata(claim: &[String], m: Option<&StrMatch>) -> rbac::SourcedMetadata {
    use matcher::metadata_matcher::{path_segment::Segment, PathSegment};
    use matcher::value_matcher::MatchPattern as V;
    let key = |k: &str| PathSegment {
        segment: Some(Segment::Key(k.to_string())),
    };
    let mut segs = vec![key(if claim.is_empty() {
        "request.auth.principal"
    } else {
        "request.auth.claims"
    })];
    segs.extend(claim.iter().map(|k| key(k)));
    let leaf = match m {
        None => V::PresentMatch(true),
        Some(m) => V::StringMatch(string(m)),
    };
    let value = if claim.is_empty() {
        matcher::ValueMatcher {
            match_pattern: Some(leaf),
        }
    } else {
        matcher::ValueMatcher {
            match_pattern: Some(V::ListMatch(Box::new(matcher::ListMatcher {
                match_pattern: Some(matcher::list_matcher::MatchPattern::OneOf(Box::new(
                    matcher::ValueMatcher {
                        match_pattern: Some(leaf),
                    },
                ))),
            }))),
        }
    };
    rbac::SourcedMetadata {
        metadata_matcher: Some(matcher::MetadataMatcher {
            filter: ISTIO_AUTHN.into(),
            path: segs,
            value: Some(value),
            invert: false,
        }),
        // Dynamic metadata (what the authentication filter wrote).
        metadata_source: 0,
    }
}

fn string(m: &StrMatch) -> matcher::StringMatcher {
    use matcher::string_matcher::MatchPattern as P;
    matcher::StringMatcher {
        ignore_case: m.ignore_case,
        match_pattern: Some(match m.kind {
            StrKind::Exact => P::Exact(m.value.clone()),
            StrKind::Prefix => P::Prefix(m.value.clone()),
            StrKind::Suffix => P::Suffix(m.value.clone()),
            StrKind::Contains => P::Contains(m.value.clone()),
            StrKind::Regex => P::SafeRegex(matcher::RegexMatcher {
                regex: m.value.clone(),
                ..Default::default()
            }),
        }),
    }
}

fn path(m: &StrMatch) -> matcher::PathMatcher {
    matcher::PathMatcher {
        rule: Some(matcher::path_matcher::Rule::Path(string(m))),
    }
}

fn header(h: &RbacHeader) -> rt::HeaderMatcher {
    use rt::header_matcher::HeaderMatchSpecifier as S;
    rt::HeaderMatcher {
        name: h.name.clone(),
        invert_match: h.invert,
        header_match_specifier: Some(match &h.rule {
            None => S::PresentMatch(true),
            Some(m) => S::StringMatch(string(m)),
        }),
        ..Default::default()
    }
}

fn cidr(c: &CidrRange) -> core::CidrRange {
    core::CidrRange {
        address_prefix: c.address.to_string(),
        prefix_len: Some(UInt32Value {
            value: u32::from(c.prefix_len),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{parse_fragment, World};

    const REG: &str = r#"authorization:
  - name: allow-reviews
    service: ratings
    rules: [{from: [{principals: ["spiffe://cluster.local/ns/default/sa/reviews"]}]}]
  - name: no-admin
    action: DENY
    rules: [{to: [{paths: ["/admin*"]}]}]
  - name: elsewhere
    service: reviews
    namespace: prod
    action: DENY
    rules: [{to: [{methods: [DELETE]}]}]
"#;

    #[test]
    fn policies_selecting_a_sidecar_merge_deny_before_allow() {
        let f = parse_fragment("p.yaml", REG).unwrap();
        let (w, e) = World::build([("p.yaml", &f)].into_iter());
        assert!(e.is_empty(), "{e:?}");
        let a = authorization_for(&w, "ratings", "default").unwrap();
        let kinds: Vec<_> = a.stages.iter().map(|s| (s.action, s.policies.len())).collect();
        assert_eq!(kinds, vec![(RbacAction::Deny, 1), (RbacAction::Allow, 1)]);
        let filters = rbac_filters(&a);
        assert_eq!(filters.len(), 2);
        assert!(filters.iter().all(|f| f.name == RBAC_FILTER && !f.is_optional));
        // `elsewhere` needs namespace prod; `no-admin` applies to every service.
        let r = authorization_for(&w, "reviews", "default").unwrap();
        assert_eq!(r.stages.len(), 1);
        assert_eq!(
            authorization_for(&w, "reviews", "prod").unwrap().stages[0]
                .policies
                .len(),
            2
        );
        let none = parse_fragment("q.yaml", "services: []\n").unwrap();
        let (w, _) = World::build([("q.yaml", &none)].into_iter());
        assert!(authorization_for(&w, "ratings", "").is_none());
    }

    #[test]
    fn bad_policies_are_refused_naming_the_field() {
        let e = parse_fragment(
            "p.yaml",
            "authorization:\n  - {name: x, rules: [{from: [{ipBlocks: [10.0.0.0/99]}], to: [{ports: [\"http\"]}]}]}\n",
        )
        .unwrap_err();
        assert!(
            e.iter()
                .any(|m| m.starts_with("p.yaml: authorization[0].rules[0].from[0].ip_blocks[0]:")),
            "{e:?}"
        );
        assert!(
            e.iter()
                .any(|m| m.starts_with("p.yaml: authorization[0].rules[0].to[0].ports[0]:")),
            "{e:?}"
        );
        let e = parse_fragment("p.yaml", "authorization:\n  - {name: x, action: CUSTOM}\n").unwrap_err();
        assert_eq!(
            e,
            vec!["p.yaml: authorization[0].action: unknown action \"CUSTOM\" (ALLOW, DENY, AUDIT)"]
        );
    }

    /// JWT conditions go out as Istio's `istio_authn` metadata matchers and come back, through the
    /// xDS client's RBAC conversion, as the same principals.
    #[test]
    fn jwt_conditions_round_trip_through_envoy_rbac() {
        let f = parse_fragment(
            "p.yaml",
            "authorization:\n  - name: admins\n    rules:\n      - from: [{requestPrincipals: ['https://idp/*']}]\n        when: [{key: 'request.auth.claims[realm][roles]', values: [admin]}, {key: request.auth.audiences, notValues: [guest]}]\n",
        )
        .unwrap();
        let (w, e) = World::build([("p.yaml", &f)].into_iter());
        assert!(e.is_empty(), "{e:?}");
        let a = authorization_for(&w, "ratings", "default").unwrap();
        let mut raw = weft_config::authz::RawAuthorization::default();
        for f in rbac_filters(&a) {
            let Some(weft_xds_api::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_filter::ConfigType::TypedConfig(any)) = &f.config_type else {
                panic!("typed config");
            };
            let r: http_rbac::Rbac = weft_xds_api::unpack(any, RBAC_URL).unwrap();
            let mut errs = weft_config::ConfigError::default();
            raw.rbac.push(weft_xds_client::rbac_xds::http(&mut errs, "f", &r));
            assert!(errs.is_empty(), "{errs}");
        }
        let (back, e) = weft_config::authz::validate("a", &raw, false);
        assert!(e.is_empty(), "{e:?}");
        assert_eq!(
            back.unwrap().stages[0].policies[0].principals,
            a.stages[0].policies[0].principals
        );
    }
}
