//! Envoy's `envoy.filters.http.jwt_authn` (`JwtAuthentication`) → weft's `jwt_authn` block.
//!
//! Fields weft cannot honour (subjects, max_lifetime, required expiration, cookies, padded payload
//! headers, named requirement maps, filter-state rules, CORS bypass, extract-only requirements,
//! route matches other than prefix/path) are refused naming the field, never dropped: a token
//! check is never weakened. Metadata outputs (`payload_in_metadata`, `header_in_metadata`, …) and
//! cache tuning have no effect in weft and are accepted.

use crate::convert::dur;
use weft_config::jwt::*;
use weft_config::ConfigError;
use weft_xds_api::pb::envoy::config::core::v3 as core;
use weft_xds_api::pb::envoy::config::route::v3 as rt;
use weft_xds_api::pb::envoy::extensions::filters::http::jwt_authn::v3 as jwt;

pub const JWT_AUTHN_NAME: &str = "envoy.filters.http.jwt_authn";
pub const JWT_AUTHN_URL: &str = "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication";

pub fn jwt_authn(errs: &mut ConfigError, path: &str, j: &jwt::JwtAuthentication) -> RawJwtAuthn {
    let mut out = RawJwtAuthn::default();
    if j.filter_state_rules.is_some() {
        errs.add(format!("{path}.filter_state_rules"), "unsupported");
    }
    if j.bypass_cors_preflight {
        errs.add(format!("{path}.bypass_cors_preflight"), "unsupported");
    }
    if !j.requirement_map.is_empty() {
        errs.add(
            format!("{path}.requirement_map"),
            "unsupported (per-route requirements)",
        );
    }
    let mut names: Vec<&String> = j.providers.keys().collect();
    names.sort();
    for name in names {
        let p = &j.providers[name];
        out.providers
            .insert(name.clone(), provider(errs, &format!("{path}.providers[{name}]"), p));
    }
    for (i, r) in j.rules.iter().enumerate() {
        let rp = format!("{path}.rules[{i}]");
        let matcher = r
            .r#match
            .as_ref()
            .and_then(|m| route_match(errs, &format!("{rp}.match"), m));
        let requires = match &r.requirement_type {
            Some(jwt::requirement_rule::RequirementType::Requires(q)) => {
                Some(requirement(errs, &format!("{rp}.requires"), q))
            }
            Some(jwt::requirement_rule::RequirementType::RequirementName(_)) => {
                errs.add(format!("{rp}.requirement_name"), "unsupported");
                None
            }
            // Envoy: a rule without a requirement means no check for what it matches.
            None => Some(RawJwtRequirement {
                allow_missing_or_failed: Some(RawEmpty {}),
                ..Default::default()
            }),
        };
        out.rules.push(RawJwtRule { matcher, requires });
    }
    out
}

fn route_match(errs: &mut ConfigError, path: &str, m: &rt::RouteMatch) -> Option<RawJwtMatch> {
    use rt::route_match::PathSpecifier as P;
    if !m.headers.is_empty() || !m.query_parameters.is_empty() || m.grpc.is_some() {
        errs.add(path, "only prefix and path are supported");
    }
    if m.case_sensitive.as_ref().is_some_and(|c| !c.value) {
        errs.add(format!("{path}.case_sensitive"), "unsupported");
    }
    match &m.path_specifier {
        Some(P::Prefix(p)) => Some(RawJwtMatch {
            prefix: Some(if p.is_empty() { "/".into() } else { p.clone() }),
            path: None,
        }),
        Some(P::Path(p)) => Some(RawJwtMatch {
            prefix: None,
            path: Some(p.clone()),
        }),
        _ => {
            errs.add(path, "only prefix and path are supported");
            None
        }
    }
}

fn requirement(errs: &mut ConfigError, path: &str, q: &jwt::JwtRequirement) -> RawJwtRequirement {
    use jwt::jwt_requirement::RequiresType as T;
    let mut out = RawJwtRequirement::default();
    match &q.requires_type {
        Some(T::ProviderName(n)) => out.provider_name = Some(n.clone()),
        Some(T::ProviderAndAudiences(_)) => errs.add(format!("{path}.provider_and_audiences"), "unsupported"),
        Some(T::RequiresAny(l)) => {
            out.requires_any = Some(RawJwtRequirements {
                requirements: l
                    .requirements
                    .iter()
                    .enumerate()
                    .map(|(i, r)| requirement(errs, &format!("{path}.requires_any.requirements[{i}]"), r))
                    .collect(),
            })
        }
        Some(T::RequiresAll(l)) => {
            out.requires_all = Some(RawJwtRequirements {
                requirements: l
                    .requirements
                    .iter()
                    .enumerate()
                    .map(|(i, r)| requirement(errs, &format!("{path}.requires_all.requirements[{i}]"), r))
                    .collect(),
            })
        }
        Some(T::AllowMissing(_)) => out.allow_missing = Some(RawEmpty {}),
        Some(T::AllowMissingOrFailed(_)) => out.allow_missing_or_failed = Some(RawEmpty {}),
        Some(T::ExtractOnlyWithoutValidation(_)) => {
            errs.add(format!("{path}.extract_only_without_validation"), "unsupported")
        }
        None => errs.add(path, "a requirement is required"),
    }
    out
}

fn provider(errs: &mut ConfigError, path: &str, p: &jwt::JwtProvider) -> RawJwtProvider {
    use jwt::jwt_provider::JwksSourceSpecifier as S;
    if p.subjects.is_some() {
        errs.add(format!("{path}.subjects"), "unsupported");
    }
    if p.require_expiration {
        errs.add(format!("{path}.require_expiration"), "unsupported");
    }
    if p.max_lifetime.is_some() {
        errs.add(format!("{path}.max_lifetime"), "unsupported");
    }
    if !p.from_cookies.is_empty() {
        errs.add(format!("{path}.from_cookies"), "unsupported");
    }
    if p.pad_forward_payload_header {
        errs.add(format!("{path}.pad_forward_payload_header"), "unsupported");
    }
    for (i, c) in p.claim_to_headers.iter().enumerate() {
        if !c.claim_path.is_empty() {
            errs.add(
                format!("{path}.claim_to_headers[{i}].claim_path"),
                "unsupported; use claim_name",
            );
        }
    }
    let mut out = RawJwtProvider {
        issuer: (!p.issuer.is_empty()).then(|| p.issuer.clone()),
        audiences: p.audiences.clone(),
        from_headers: p
            .from_headers
            .iter()
            .map(|h| RawJwtHeader {
                name: Some(h.name.clone()),
                value_prefix: (!h.value_prefix.is_empty()).then(|| h.value_prefix.clone()),
            })
            .collect(),
        from_params: p.from_params.clone(),
        forward: Some(p.forward),
        forward_payload_header: (!p.forward_payload_header.is_empty()).then(|| p.forward_payload_header.clone()),
        claim_to_headers: p
            .claim_to_headers
            .iter()
            .map(|c| RawClaimToHeader {
                header_name: Some(c.header_name.clone()),
                claim_name: Some(c.claim_name.clone()),
            })
            .collect(),
        // Envoy: 0 means its default (60 s).
        clock_skew_seconds: (p.clock_skew_seconds != 0).then_some(u64::from(p.clock_skew_seconds)),
        ..Default::default()
    };
    match &p.jwks_source_specifier {
        Some(S::LocalJwks(d)) => {
            use core::data_source::Specifier as D;
            out.local_jwks = Some(match &d.specifier {
                Some(D::Filename(f)) => RawDataSource {
                    filename: Some(f.clone()),
                    inline_string: None,
                },
                Some(D::InlineString(s)) => RawDataSource {
                    filename: None,
                    inline_string: Some(s.clone()),
                },
                Some(D::InlineBytes(b)) => RawDataSource {
                    filename: None,
                    inline_string: Some(String::from_utf8_lossy(b).into_owned()),
                },
                _ => {
                    errs.add(
                        format!("{path}.local_jwks"),
                        "needs filename, inline_string or inline_bytes",
                    );
                    RawDataSource::default()
                }
            });
        }
        Some(S::RemoteJwks(r)) => {
            let rp = format!("{path}.remote_jwks");
            if r.retry_policy.is_some() {
                // weft retries a failed fetch after 1 s on its own; Envoy's policy is not read.
                tracing::debug!(path = %rp, "remote_jwks.retry_policy ignored");
            }
            let http_uri = r.http_uri.as_ref().map(|u| {
                let cluster = u
                    .http_upstream_type
                    .as_ref()
                    .map(|core::http_uri::HttpUpstreamType::Cluster(c)| c.clone());
                RawHttpUri {
                    uri: Some(u.uri.clone()),
                    cluster,
                    timeout: u.timeout.as_ref().map(dur),
                }
            });
            out.remote_jwks = Some(RawRemoteJwks {
                http_uri,
                cache_duration: r.cache_duration.as_ref().map(dur),
            });
        }
        None => {}
    }
    out
}
