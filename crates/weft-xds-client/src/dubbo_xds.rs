//! `envoy.filters.network.dubbo_proxy` (Envoy's contrib Dubbo proxy) → a filter chain's `rpc`
//! block with `protocol: dubbo`.
//!
//! Envoy tries its route configurations in order: one whose `interface` (exact, `*`, or a
//! `*`-prefix/suffix wildcard), `group` and `version` (each exact when set) hold for the request
//! tries its routes in order, and the first route that matches wins; a configuration whose routes
//! all miss lets the next configuration try. weft's RPC routes are one ordered list whose matches
//! carry interface, group and version next to method, attachments and arguments, so each Envoy
//! route becomes one weft route with its configuration's conditions added: the same first match.
//! What weft's route model cannot express (wildcard interfaces other than `*`, method names other
//! than an exact string or `safe_regex: ".*"` (any method), argument ranges, header matchers other than an exact value, weighted
//! splits over several clusters, Dubbo filters other than the router, DRDS) is refused with the
//! Envoy field named.

// `DubboProxy.route_config` (deprecated for `multiple_route_config`) and the header matcher's
// `exact_match` are still what control planes send, so they are read on purpose.
#![allow(deprecated)]

use std::collections::BTreeMap;
use weft_config::rpc::{RawArgMatch, RawRpc, RawRpcMatch, RawRpcRoute};
use weft_config::ConfigError;
use weft_xds_api::pb::envoy::config::route::v3 as rt;
use weft_xds_api::pb::envoy::extensions::filters::network::dubbo_proxy::v3 as dubbo;
use weft_xds_api::pb::envoy::r#type::matcher::v3 as matcher;
use weft_xds_api::pb::google::protobuf::Any;

/// The filter's name.
pub const DUBBO_PROXY_NAME: &str = "envoy.filters.network.dubbo_proxy";
/// Its `typed_config` type.
pub const DUBBO_PROXY_URL: &str = weft_xds_api::type_url::DUBBO_PROXY;
/// The one Dubbo filter weft has: the router (Envoy's default when `dubbo_filters` is empty).
pub const DUBBO_ROUTER_NAME: &str = "envoy.filters.dubbo.router";
/// The router's config type.
pub const DUBBO_ROUTER_URL: &str = "type.googleapis.com/envoy.extensions.filters.network.dubbo_proxy.router.v3.Router";

/// Converts a `DubboProxy` (`path` is its `typed_config`).
pub fn dubbo_proxy(errs: &mut ConfigError, path: &str, d: &dubbo::DubboProxy) -> RawRpc {
    // The API's own rules (protoc-gen-validate): stat_prefix min_len 1, enums defined_only.
    if d.stat_prefix.is_empty() {
        errs.add(format!("{path}.stat_prefix"), "must not be empty (min_len: 1)");
    }
    if d.protocol_type != dubbo::ProtocolType::Dubbo as i32 {
        errs.add(
            format!("{path}.protocol_type"),
            format!("unsupported value {} (Dubbo only)", d.protocol_type),
        );
    }
    if d.serialization_type != dubbo::SerializationType::Hessian2 as i32 {
        errs.add(
            format!("{path}.serialization_type"),
            format!("unsupported value {} (Hessian2 only)", d.serialization_type),
        );
    }
    dubbo_filters(errs, path, &d.dubbo_filters);
    let configs: Vec<(String, &dubbo::RouteConfiguration)> = match &d.route_specifier {
        Some(dubbo::dubbo_proxy::RouteSpecifier::Drds(_)) => {
            errs.add(
                format!("{path}.drds"),
                "unsupported (give the routes inline in multiple_route_config or route_config)",
            );
            Vec::new()
        }
        Some(dubbo::dubbo_proxy::RouteSpecifier::MultipleRouteConfig(m)) => {
            if !d.route_config.is_empty() {
                errs.add(
                    format!("{path}.route_config"),
                    "give route_config or multiple_route_config, not both",
                );
            }
            (m.route_config.iter().enumerate())
                .map(|(i, rc)| (format!("{path}.multiple_route_config.route_config[{i}]"), rc))
                .collect()
        }
        None => (d.route_config.iter().enumerate())
            .map(|(i, rc)| (format!("{path}.route_config[{i}]"), rc))
            .collect(),
    };
    let mut routes = Vec::new();
    for (rp, rc) in &configs {
        route_configuration(errs, rp, rc, &mut routes);
    }
    if configs.is_empty() && !matches!(d.route_specifier, Some(dubbo::dubbo_proxy::RouteSpecifier::Drds(_))) {
        errs.add(
            format!("{path}.route_config"),
            "at least one route configuration is required (weft has no DRDS)",
        );
    } else if routes.is_empty() && !configs.is_empty() {
        // weft's rpc block needs a route; Envoy would answer every call "no route".
        errs.add(format!("{}.routes", configs[0].0), "at least one route is required");
    }
    RawRpc {
        protocol: Some("dubbo".into()),
        stat_prefix: Some(d.stat_prefix.clone()),
        routes,
        ..Default::default()
    }
}

fn dubbo_filters(errs: &mut ConfigError, path: &str, filters: &[dubbo::DubboFilter]) {
    for (i, f) in filters.iter().enumerate() {
        let fp = format!("{path}.dubbo_filters[{i}]");
        let typed = f.config.as_ref().map(|a: &Any| a.type_url.as_str()).unwrap_or("");
        let router = f.name == DUBBO_ROUTER_NAME && (typed.is_empty() || typed == DUBBO_ROUTER_URL);
        if !router {
            let what = if f.name.is_empty() { typed } else { f.name.as_str() };
            errs.add(
                &fp,
                format!("unsupported Dubbo filter \"{what}\" (weft has {DUBBO_ROUTER_NAME} only)"),
            );
        } else if i > 0 {
            errs.add(&fp, format!("{DUBBO_ROUTER_NAME} may appear once"));
        }
    }
}

fn route_configuration(errs: &mut ConfigError, path: &str, rc: &dubbo::RouteConfiguration, out: &mut Vec<RawRpcRoute>) {
    let interface = match rc.interface.as_str() {
        "*" => None,
        "" => {
            errs.add(
                format!("{path}.interface"),
                "must not be empty (\"*\" matches any interface)",
            );
            None
        }
        i if i.contains('*') => {
            errs.add(
                format!("{path}.interface"),
                format!("wildcard \"{i}\" is not supported (an exact interface or \"*\")"),
            );
            None
        }
        i => Some(i.to_string()),
    };
    let group = (!rc.group.is_empty()).then(|| rc.group.clone());
    let version = (!rc.version.is_empty()).then(|| rc.version.clone());
    let base = if rc.name.is_empty() {
        rc.interface.clone()
    } else {
        rc.name.clone()
    };
    for (j, r) in rc.routes.iter().enumerate() {
        let p = format!("{path}.routes[{j}]");
        let mut m = RawRpcMatch {
            interface: interface.clone(),
            group: group.clone(),
            version: version.clone(),
            ..Default::default()
        };
        match &r.r#match {
            None => errs.add(format!("{p}.match"), "is required"),
            Some(rm) => route_match(errs, &format!("{p}.match"), rm, &mut m),
        }
        let (cluster, subset) = match &r.route {
            None => {
                errs.add(format!("{p}.route"), "is required");
                (None, BTreeMap::new())
            }
            Some(a) => route_action(errs, &format!("{p}.route"), a),
        };
        out.push(RawRpcRoute {
            name: Some(format!("{base}/routes[{j}]")),
            match_: Some(m),
            cluster,
            subset,
            ..Default::default()
        });
    }
}

fn route_match(errs: &mut ConfigError, path: &str, rm: &dubbo::RouteMatch, m: &mut RawRpcMatch) {
    match &rm.method {
        // Envoy needs a method matcher (an empty StringMatcher fails its validation).
        None => errs.add(format!("{path}.method"), "is required"),
        Some(mm) => {
            let np = format!("{path}.method.name");
            match &mm.name {
                None => errs.add(&np, "is required"),
                Some(s) if any_string(s) => {}
                Some(s) => m.method = exact(errs, &np, s),
            }
            let mut params: Vec<_> = mm.params_match.iter().collect();
            params.sort_by_key(|(k, _)| **k);
            for (index, spec) in params {
                use dubbo::method_match::parameter_match_specifier::ParameterMatchSpecifier as P;
                let pp = format!("{path}.method.params_match[{index}]");
                if *index > 255 {
                    errs.add(&pp, "argument index out of range [0, 255]");
                    continue;
                }
                match &spec.parameter_match_specifier {
                    Some(P::ExactMatch(v)) => m.arguments.push(RawArgMatch {
                        index: Some(u64::from(*index)),
                        equals: Some(v.clone()),
                    }),
                    Some(P::RangeMatch(_)) => errs.add(&pp, "range matching is not supported"),
                    None => errs.add(&pp, "an exact_match is required"),
                }
            }
        }
    }
    for (k, h) in rm.headers.iter().enumerate() {
        let hp = format!("{path}.headers[{k}]");
        if h.name.is_empty() {
            errs.add(format!("{hp}.name"), "must not be empty (min_len: 1)");
            continue;
        }
        if h.invert_match {
            errs.add(
                format!("{hp}.invert_match"),
                "unsupported (attachments match by equal value)",
            );
            continue;
        }
        if h.treat_missing_header_as_empty {
            errs.add(
                format!("{hp}.treat_missing_header_as_empty"),
                "unsupported (attachments match by equal value)",
            );
            continue;
        }
        use rt::header_matcher::HeaderMatchSpecifier as H;
        let value = match &h.header_match_specifier {
            Some(H::ExactMatch(v)) => Some(v.clone()),
            Some(H::StringMatch(s)) => exact(errs, &format!("{hp}.string_match"), s),
            _ => {
                errs.add(
                    &hp,
                    "only an exact value (exact_match or string_match.exact) is supported for Dubbo attachments",
                );
                None
            }
        };
        if let Some(v) = value {
            if m.attachments.insert(h.name.clone(), v).is_some() {
                errs.add(format!("{hp}.name"), format!("\"{}\" is matched twice", h.name));
            }
        }
    }
}

/// A matcher that takes any string: `safe_regex` `.*` (how a route for every method is written,
/// since Envoy requires a method matcher and refuses an empty prefix).
fn any_string(s: &matcher::StringMatcher) -> bool {
    use matcher::string_matcher::MatchPattern as M;
    matches!(&s.match_pattern, Some(M::SafeRegex(r)) if r.regex == ".*")
}

/// A StringMatcher that weft can honour: an exact, case-sensitive, non-empty string.
fn exact(errs: &mut ConfigError, path: &str, s: &matcher::StringMatcher) -> Option<String> {
    use matcher::string_matcher::MatchPattern as M;
    match &s.match_pattern {
        Some(M::Exact(_)) if s.ignore_case => {
            errs.add(
                format!("{path}.ignore_case"),
                "unsupported (exact, case-sensitive matching only)",
            );
            None
        }
        Some(M::Exact(v)) if v.is_empty() => {
            errs.add(format!("{path}.exact"), "must not be empty");
            None
        }
        Some(M::Exact(v)) => Some(v.clone()),
        Some(other) => {
            let what = match other {
                M::Prefix(_) => "prefix",
                M::Suffix(_) => "suffix",
                M::SafeRegex(_) => "safe_regex",
                M::Contains(_) => "contains",
                M::Custom(_) => "custom",
                M::Exact(_) => unreachable!(),
            };
            errs.add(format!("{path}.{what}"), "unsupported (exact matching only)");
            None
        }
        None => {
            errs.add(path, "a match pattern is required");
            None
        }
    }
}

fn route_action(
    errs: &mut ConfigError,
    path: &str,
    a: &dubbo::RouteAction,
) -> (Option<String>, BTreeMap<String, String>) {
    use dubbo::route_action::ClusterSpecifier as C;
    let cluster = match &a.cluster_specifier {
        Some(C::Cluster(c)) if c.is_empty() => {
            errs.add(format!("{path}.cluster"), "must not be empty (min_len: 1)");
            None
        }
        Some(C::Cluster(c)) => Some(c.clone()),
        Some(C::WeightedClusters(w)) => match w.clusters.as_slice() {
            [one] if !one.name.is_empty() => Some(one.name.clone()),
            [] => {
                errs.add(
                    format!("{path}.weighted_clusters.clusters"),
                    "must have at least one item",
                );
                None
            }
            _ => {
                errs.add(
                    format!("{path}.weighted_clusters"),
                    "a split over several clusters is not supported (a weft rpc route names one cluster)",
                );
                None
            }
        },
        None => {
            errs.add(format!("{path}.cluster"), "is required");
            None
        }
    };
    let mut subset = BTreeMap::new();
    if let Some(md) = &a.metadata_match {
        let mp = format!("{path}.metadata_match");
        if !md.typed_filter_metadata.is_empty() {
            errs.add(format!("{mp}.typed_filter_metadata"), "unsupported");
        }
        for (k, s) in &md.filter_metadata {
            if k != "envoy.lb" {
                errs.add(
                    format!("{mp}.filter_metadata[\"{k}\"]"),
                    "unsupported (only \"envoy.lb\" selects endpoints)",
                );
                continue;
            }
            for (name, v) in &s.fields {
                let Some(v) = crate::convert::value_text(v) else {
                    errs.add(
                        format!("{mp}.filter_metadata[\"envoy.lb\"].{name}"),
                        "only string, bool and number values are supported",
                    );
                    continue;
                };
                subset.insert(name.clone(), v);
            }
        }
    }
    (cluster, subset)
}
