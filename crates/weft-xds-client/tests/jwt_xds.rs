//! Envoy's `envoy.filters.http.jwt_authn` over xDS becomes weft's `jwt_authn` block; what weft
//! cannot honour is refused naming the Envoy field.

use std::collections::HashMap;
use weft_config::jwt::{JwksSource, JwtAuthn, JwtMatch, JwtRequirement};
use weft_config::raw::RawConfig;
use weft_config::*;
use weft_xds_api::pb::envoy::config::core::v3 as core;
use weft_xds_api::pb::envoy::config::listener::v3 as ls;
use weft_xds_api::pb::envoy::config::route::v3 as rt;
use weft_xds_api::pb::envoy::extensions::filters::http::jwt_authn::v3 as jwt;
use weft_xds_api::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
use weft_xds_api::pb::google::protobuf::Duration as PbDuration;
use weft_xds_api::{pack, type_url};
use weft_xds_client::convert;
use weft_xds_client::jwt_xds::JWT_AUTHN_URL;

fn listener(j: &jwt::JwtAuthentication) -> ls::Listener {
    let router = hcm::HttpFilter {
        name: "envoy.filters.http.router".into(),
        config_type: Some(hcm::http_filter::ConfigType::TypedConfig(pack(
            type_url::ROUTER,
            &weft_xds_api::pb::envoy::extensions::filters::http::router::v3::Router::default(),
        ))),
        ..Default::default()
    };
    let jwt_filter = hcm::HttpFilter {
        name: "envoy.filters.http.jwt_authn".into(),
        config_type: Some(hcm::http_filter::ConfigType::TypedConfig(pack(JWT_AUTHN_URL, j))),
        ..Default::default()
    };
    let h = hcm::HttpConnectionManager {
        stat_prefix: "inbound".into(),
        route_specifier: Some(hcm::http_connection_manager::RouteSpecifier::RouteConfig(
            rt::RouteConfiguration {
                name: "r".into(),
                virtual_hosts: vec![rt::VirtualHost {
                    name: "all".into(),
                    domains: vec!["*".into()],
                    routes: vec![rt::Route {
                        r#match: Some(rt::RouteMatch {
                            path_specifier: Some(rt::route_match::PathSpecifier::Prefix("/".into())),
                            ..Default::default()
                        }),
                        action: Some(rt::route::Action::Route(rt::RouteAction {
                            cluster_specifier: Some(rt::route_action::ClusterSpecifier::Cluster("app".into())),
                            ..Default::default()
                        })),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            },
        )),
        http_filters: vec![jwt_filter, router],
        ..Default::default()
    };
    ls::Listener {
        name: "inbound".into(),
        address: Some(core::Address {
            address: Some(core::address::Address::SocketAddress(core::SocketAddress {
                address: "127.0.0.1".into(),
                port_specifier: Some(core::socket_address::PortSpecifier::PortValue(0)),
                ..Default::default()
            })),
        }),
        filter_chains: vec![ls::FilterChain {
            filters: vec![ls::Filter {
                name: "envoy.filters.network.http_connection_manager".into(),
                config_type: Some(ls::filter::ConfigType::TypedConfig(pack(type_url::HCM, &h))),
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn converted(l: &ls::Listener) -> Result<JwtAuthn, String> {
    let x = convert::listener(l).map_err(|e| e.lines().join("\n"))?.unwrap();
    let raw = RawConfig {
        listeners: vec![x.raw],
        ..Default::default()
    };
    let cfg = validate_with(
        raw,
        ValidateOptions {
            allow_unknown_clusters: true,
            allow_empty_clusters: true,
            allow_empty_route_configs: true,
        },
    )
    .map_err(|e| e.to_string())?;
    match &cfg.listeners[0].filter_chains[0].filter {
        NetworkFilter::Http(h) => Ok(*h.jwt_authn.clone().expect("a jwt_authn block")),
        _ => panic!("an HTTP listener"),
    }
}

fn provider_req(name: &str) -> jwt::JwtRequirement {
    jwt::JwtRequirement {
        requires_type: Some(jwt::jwt_requirement::RequiresType::ProviderName(name.into())),
    }
}

fn istio_like() -> jwt::JwtAuthentication {
    let remote = jwt::JwtProvider {
        issuer: "https://idp.test/".into(),
        audiences: vec!["bookstore".into()],
        forward: true,
        payload_in_metadata: "payload".into(),
        claim_to_headers: vec![jwt::JwtClaimToHeader {
            header_name: "x-jwt-sub".into(),
            claim_name: "sub".into(),
            ..Default::default()
        }],
        jwks_source_specifier: Some(jwt::jwt_provider::JwksSourceSpecifier::RemoteJwks(jwt::RemoteJwks {
            http_uri: Some(core::HttpUri {
                uri: "http://idp.test/jwks".into(),
                timeout: Some(PbDuration { seconds: 2, nanos: 0 }),
                http_upstream_type: Some(core::http_uri::HttpUpstreamType::Cluster("idp".into())),
            }),
            cache_duration: Some(PbDuration { seconds: 30, nanos: 0 }),
            ..Default::default()
        })),
        ..Default::default()
    };
    let local = jwt::JwtProvider {
        from_headers: vec![jwt::JwtHeader {
            name: "x-token".into(),
            value_prefix: String::new(),
        }],
        jwks_source_specifier: Some(jwt::jwt_provider::JwksSourceSpecifier::LocalJwks(core::DataSource {
            specifier: Some(core::data_source::Specifier::InlineString(
                r#"{"keys":[{"kty":"EC","crv":"P-256","x":"AA","y":"AA"}]}"#.into(),
            )),
            ..Default::default()
        })),
        ..Default::default()
    };
    jwt::JwtAuthentication {
        providers: HashMap::from([("remote".to_string(), remote), ("local".to_string(), local)]),
        rules: vec![
            jwt::RequirementRule {
                r#match: Some(rt::RouteMatch {
                    path_specifier: Some(rt::route_match::PathSpecifier::Path("/healthz".into())),
                    ..Default::default()
                }),
                requirement_type: None,
            },
            jwt::RequirementRule {
                r#match: Some(rt::RouteMatch {
                    path_specifier: Some(rt::route_match::PathSpecifier::Prefix("/".into())),
                    ..Default::default()
                }),
                requirement_type: Some(jwt::requirement_rule::RequirementType::Requires(jwt::JwtRequirement {
                    requires_type: Some(jwt::jwt_requirement::RequiresType::RequiresAny(
                        jwt::JwtRequirementOrList {
                            requirements: vec![
                                provider_req("remote"),
                                provider_req("local"),
                                jwt::JwtRequirement {
                                    requires_type: Some(jwt::jwt_requirement::RequiresType::AllowMissing(
                                        Default::default(),
                                    )),
                                },
                            ],
                        },
                    )),
                })),
            },
        ],
        ..Default::default()
    }
}

#[test]
fn jwt_authn_filter_converts() {
    let j = converted(&listener(&istio_like())).unwrap();
    // Providers in name order: local, remote.
    assert_eq!(j.providers[0].name, "local");
    assert_eq!(j.providers[0].from_headers[0].name, "x-token");
    let r = &j.providers[1];
    assert_eq!(r.issuer.as_deref(), Some("https://idp.test/"));
    assert_eq!(r.audiences, ["bookstore"]);
    assert!(r.forward);
    assert_eq!(r.claim_to_headers[0].header_name, "x-jwt-sub");
    match &r.jwks {
        JwksSource::Remote(x) => {
            assert_eq!(
                (x.cluster.as_str(), x.authority.as_str(), x.path.as_str()),
                ("idp", "idp.test", "/jwks")
            );
            assert_eq!(x.timeout.as_secs(), 2);
            assert_eq!(x.cache_duration.as_secs(), 30);
        }
        o => panic!("{o:?}"),
    }
    assert_eq!(j.rules[0].matcher, JwtMatch::Path("/healthz".into()));
    assert_eq!(j.rules[0].requires, JwtRequirement::AllowMissingOrFailed);
    assert_eq!(
        j.rules[1].requires,
        JwtRequirement::Any(vec![
            JwtRequirement::Provider(1),
            JwtRequirement::Provider(0),
            JwtRequirement::AllowMissing
        ])
    );
}

#[test]
fn unsupported_fields_are_refused_by_name() {
    let mut j = istio_like();
    j.providers.get_mut("remote").unwrap().from_cookies = vec!["session".into()];
    j.bypass_cors_preflight = true;
    let e = converted(&listener(&j)).unwrap_err();
    assert!(e.contains("providers[remote].from_cookies"), "{e}");
    assert!(e.contains("bypass_cors_preflight"), "{e}");

    let mut j = istio_like();
    j.rules[1].requirement_type = Some(jwt::requirement_rule::RequirementType::Requires(provider_req("nobody")));
    let e = converted(&listener(&j)).unwrap_err();
    assert!(e.contains("jwt_authn.rules[1].requires.provider_name"), "{e}");
}

/// RBAC principals on a JWT claim written Envoy's way (`envoy.filters.http.jwt_authn` metadata,
/// the `payload_in_metadata` key then the claim) become claim principals; other metadata is refused.
#[test]
fn rbac_jwt_payload_metadata_principals() {
    #![allow(deprecated)]
    use weft_config::authz::{Principal, RawAuthorization, StrKind, StrMatch};
    use weft_xds_api::pb::envoy::config::rbac::v3 as rbac;
    use weft_xds_api::pb::envoy::extensions::filters::http::rbac::v3 as http_rbac;
    use weft_xds_api::pb::envoy::r#type::matcher::v3 as matcher;
    let meta = |filter: &str, keys: &[&str], invert: bool| matcher::MetadataMatcher {
        filter: filter.into(),
        path: keys
            .iter()
            .map(|k| matcher::metadata_matcher::PathSegment {
                segment: Some(matcher::metadata_matcher::path_segment::Segment::Key(k.to_string())),
            })
            .collect(),
        value: Some(matcher::ValueMatcher {
            match_pattern: Some(matcher::value_matcher::MatchPattern::StringMatch(
                matcher::StringMatcher {
                    match_pattern: Some(matcher::string_matcher::MatchPattern::Exact("admin".into())),
                    ..Default::default()
                },
            )),
        }),
        invert,
    };
    let policy = |m: matcher::MetadataMatcher| http_rbac::Rbac {
        rules: Some(rbac::Rbac {
            action: rbac::rbac::Action::Allow as i32,
            policies: HashMap::from([(
                "p".to_string(),
                rbac::Policy {
                    permissions: vec![rbac::Permission {
                        rule: Some(rbac::permission::Rule::Any(true)),
                    }],
                    principals: vec![rbac::Principal {
                        identifier: Some(rbac::principal::Identifier::Metadata(m)),
                    }],
                    ..Default::default()
                },
            )]),
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut errs = weft_config::ConfigError::default();
    let raw = weft_xds_client::rbac_xds::http(
        &mut errs,
        "f",
        &policy(meta("envoy.filters.http.jwt_authn", &["payload", "groups"], true)),
    );
    assert!(errs.lines().is_empty(), "{:?}", errs.lines());
    let (a, e) = weft_config::authz::validate(
        "a",
        &RawAuthorization {
            rbac: vec![raw],
            ..Default::default()
        },
        false,
    );
    assert!(e.is_empty(), "{e:?}");
    assert_eq!(
        a.unwrap().stages[0].policies[0].principals[0],
        Principal::Not(Box::new(Principal::RequestClaim {
            path: vec!["groups".into()],
            rule: Some(StrMatch::new(StrKind::Exact, "admin")),
        }))
    );
    let mut errs = weft_config::ConfigError::default();
    weft_xds_client::rbac_xds::http(&mut errs, "f", &policy(meta("envoy.lb", &["canary"], false)));
    assert!(
        errs.lines()
            .iter()
            .any(|e| e.starts_with("f.rules.policies[p].principals[0].metadata: unsupported")),
        "{:?}",
        errs.lines()
    );
}
