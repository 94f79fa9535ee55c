//! `envoy.filters.network.generic_proxy` (Envoy's contrib generic proxy) with its Dubbo codec → a
//! filter chain's `rpc` block with `protocol: dubbo`.
//!
//! Envoy routes a generic-proxy request in two steps. It picks one virtual host by the request's
//! host (for Dubbo, the service interface): an exact host, then `*.suffix` and `prefix.*`
//! wildcards, then the `*` host or, without one, the route configuration's own `routes`. It then
//! evaluates that host's `xds.type.matcher.v3` tree; a request the tree does not match gets "no
//! route", without trying any other virtual host.
//!
//! weft's RPC routes are one ordered list, first match wins, each route a conjunction of
//! interface, method, version, group and attachments. A match tree is flattened into that list:
//! a matcher list keeps its order, a predicate becomes a conjunction (an `or_matcher` one route per
//! alternative), an exact-match map one branch per key (sorted; at most one key can hold), a
//! nested matcher adds its conditions to its parent's, and `on_no_match` comes after the branches
//! it backs up. That is the first match of the tree: xDS defines a nested matcher that does not
//! match as its parent's predicate not matching, so evaluation goes on where the flattened list
//! goes on. Each exact host's routes carry `interface: <host>`; the default host's come last,
//! and when there is one, each exact host ends with a `no_route` route for its interface, so a
//! call the host's tree misses is answered "no route" as Envoy answers it instead of falling
//! through to the default host.
//!
//! Inputs: `HostMatchInput`, `ServiceMatchInput` and `PathMatchInput` are the interface (Envoy's
//! Dubbo codec gives the service name for all three), `MethodMatchInput` the method,
//! `PropertyMatchInput` `version` the service version and any other property the attachment of
//! that name (`group` is one). `RequestMatchInput` with the `RequestMatcher` custom matcher is the
//! conjunction of its fields. Values match exactly; `safe_regex: ".*"` on the interface or the
//! method matches any.
//!
//! Refused with the Envoy field named: codecs other than Dubbo (Envoy 1.40 has no Bolt codec),
//! filters other than the router (and its `bind_upstream_connection`), `generic_rds`, access logs,
//! wildcard hosts other than `*`, `not_matcher`, prefix and custom match maps, `keep_matching`,
//! string matches other than exact (and `.*` where it means any), a route's `per_filter_config`,
//! a timeout of 0 (no timeout) and weighted splits over several clusters.

use std::collections::BTreeMap;
use weft_config::rpc::{RawRpc, RawRpcMatch, RawRpcRetries, RawRpcRoute};
use weft_config::ConfigError;
use weft_xds_api::pb::envoy::config::core::v3::TypedExtensionConfig;
use weft_xds_api::pb::envoy::extensions::filters::network::generic_proxy::action::v3 as action;
use weft_xds_api::pb::envoy::extensions::filters::network::generic_proxy::matcher::v3 as gm;
use weft_xds_api::pb::envoy::extensions::filters::network::generic_proxy::router::v3 as router;
use weft_xds_api::pb::envoy::extensions::filters::network::generic_proxy::v3 as gp;
use weft_xds_api::pb::envoy::r#type::matcher::v3 as em;
use weft_xds_api::pb::xds::core::v3::TypedExtensionConfig as XdsExtension;
use weft_xds_api::pb::xds::r#type::matcher::v3 as xm;

/// The filter's name.
pub const GENERIC_PROXY_NAME: &str = "envoy.filters.network.generic_proxy";
/// Its `typed_config` type.
pub const GENERIC_PROXY_URL: &str = weft_xds_api::type_url::GENERIC_PROXY;
/// The one codec weft takes over xDS.
pub const DUBBO_CODEC_URL: &str =
    "type.googleapis.com/envoy.extensions.filters.network.generic_proxy.codecs.dubbo.v3.DubboCodecConfig";
/// The terminal filter every generic proxy ends with.
pub const ROUTER_URL: &str = "type.googleapis.com/envoy.extensions.filters.network.generic_proxy.router.v3.Router";
/// A match tree's action.
pub const ROUTE_ACTION_URL: &str =
    "type.googleapis.com/envoy.extensions.filters.network.generic_proxy.action.v3.RouteAction";
const MATCHER_PKG: &str = "type.googleapis.com/envoy.extensions.filters.network.generic_proxy.matcher.v3.";

/// Routes one listener may flatten into: `or_matcher`s multiply, and a tree that grows past this
/// is refused rather than slowing every call's route scan.
const MAX_ROUTES: usize = 1024;
/// Nesting of matchers (Envoy's own limit is 16 by default as well).
const MAX_DEPTH: usize = 16;
/// Envoy's route timeout when the action gives none.
const DEFAULT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

/// Converts a `GenericProxy` (`path` is its `typed_config`).
pub fn generic_proxy(errs: &mut ConfigError, path: &str, g: &gp::GenericProxy) -> RawRpc {
    if g.stat_prefix.is_empty() {
        errs.add(format!("{path}.stat_prefix"), "must not be empty (min_len: 1)");
    }
    match &g.codec_config {
        None => errs.add(format!("{path}.codec_config"), "is required"),
        Some(c) => {
            let url = c.typed_config.as_ref().map(|a| a.type_url.as_str()).unwrap_or("");
            if url != DUBBO_CODEC_URL {
                errs.add(
                    format!("{path}.codec_config"),
                    format!("unsupported codec \"{url}\" (weft takes the Dubbo codec, DubboCodecConfig)"),
                );
            }
        }
    }
    filters(errs, path, &g.filters);
    if !g.access_log.is_empty() {
        errs.add(
            format!("{path}.access_log"),
            "unsupported over xDS (give the rpc listener's access_log in the YAML file)",
        );
    }
    let tracing = crate::tracing_xds::from_hcm(errs, &format!("{path}.tracing"), g.tracing.as_ref());
    let mut routes = Vec::new();
    match &g.route_specifier {
        Some(gp::generic_proxy::RouteSpecifier::GenericRds(_)) => errs.add(
            format!("{path}.generic_rds"),
            "unsupported (give the routes inline in route_config)",
        ),
        Some(gp::generic_proxy::RouteSpecifier::RouteConfig(rc)) => {
            route_configuration(errs, &format!("{path}.route_config"), rc, &mut routes);
            if routes.is_empty() {
                errs.add(
                    format!("{path}.route_config"),
                    "has no route (weft's rpc listener needs at least one)",
                );
            }
        }
        None => errs.add(format!("{path}.route_config"), "is required"),
    }
    RawRpc {
        protocol: Some("dubbo".into()),
        stat_prefix: Some(g.stat_prefix.clone()),
        routes,
        tracing,
        ..Default::default()
    }
}

fn filters(errs: &mut ConfigError, path: &str, filters: &[TypedExtensionConfig]) {
    if filters.is_empty() {
        errs.add(
            format!("{path}.filters"),
            "a terminal filter is required (the router, Router)",
        );
    }
    for (i, f) in filters.iter().enumerate() {
        let fp = format!("{path}.filters[{i}]");
        let Some(a) = f.typed_config.as_ref().filter(|a| a.type_url == ROUTER_URL) else {
            let url = f.typed_config.as_ref().map(|a| a.type_url.as_str()).unwrap_or("");
            errs.add(
                &fp,
                format!(
                    "unsupported filter \"{}\" (weft has the router only)",
                    if url.is_empty() { &f.name } else { url }
                ),
            );
            continue;
        };
        match weft_xds_api::unpack::<router::Router>(a, ROUTER_URL) {
            Ok(r) if r.bind_upstream_connection => errs.add(
                format!("{fp}.typed_config.bind_upstream_connection"),
                "unsupported (weft multiplexes calls over shared upstream connections)",
            ),
            Ok(_) => {}
            Err(e) => errs.add(format!("{fp}.typed_config"), e),
        }
        if i + 1 != filters.len() {
            errs.add(&fp, "the router is terminal: it must be the last filter");
        }
    }
}

/// What one flattened route asks of a call.
#[derive(Clone, Debug, Default, PartialEq)]
struct Cond {
    interface: Option<String>,
    method: Option<String>,
    version: Option<String>,
    group: Option<String>,
    attachments: BTreeMap<String, String>,
}

/// The request value an input reads.
#[derive(Clone, Debug)]
enum Field {
    Interface,
    Method,
    Property(String),
}

/// What a string matcher takes: one exact value, or any value.
enum Val {
    Exact(String),
    Any,
}

impl Cond {
    /// `self` and `field == v`; `None` when no call can satisfy both.
    fn with(mut self, field: &Field, v: &str) -> Option<Cond> {
        let slot = match field {
            Field::Interface => &mut self.interface,
            Field::Method => &mut self.method,
            Field::Property(k) if k == "version" => &mut self.version,
            Field::Property(k) if k == "group" => &mut self.group,
            Field::Property(k) => {
                return match self.attachments.get(k) {
                    Some(x) if x != v => None,
                    Some(_) => Some(self),
                    None => {
                        self.attachments.insert(k.clone(), v.to_string());
                        Some(self)
                    }
                };
            }
        };
        match slot {
            Some(x) if x != v => return None,
            Some(_) => {}
            None => *slot = Some(v.to_string()),
        }
        Some(self)
    }

    /// Both conditions; `None` when they contradict.
    fn and(&self, o: &Cond) -> Option<Cond> {
        let mut c = self.clone();
        let pairs = [
            (Field::Interface, &o.interface),
            (Field::Method, &o.method),
            (Field::Property("version".into()), &o.version),
            (Field::Property("group".into()), &o.group),
        ];
        for (f, v) in pairs {
            if let Some(v) = v {
                c = c.with(&f, v)?;
            }
        }
        for (k, v) in &o.attachments {
            c = c.with(&Field::Property(k.clone()), v)?;
        }
        Some(c)
    }

    fn to_match(&self) -> RawRpcMatch {
        RawRpcMatch {
            interface: self.interface.clone(),
            method: self.method.clone(),
            version: self.version.clone(),
            group: self.group.clone(),
            attachments: self.attachments.clone(),
            ..Default::default()
        }
    }
}

/// Flattens the virtual hosts and default routes of a route configuration.
fn route_configuration(errs: &mut ConfigError, path: &str, rc: &gp::RouteConfiguration, out: &mut Vec<RawRpcRoute>) {
    let base_name = if rc.name.is_empty() {
        "generic"
    } else {
        rc.name.as_str()
    };
    // (host, virtual host index) in order, and the default host's tree.
    let mut exact: Vec<(String, usize)> = Vec::new();
    let mut default: Option<(String, &xm::Matcher, String)> = None;
    for (i, vh) in rc.virtual_hosts.iter().enumerate() {
        let vp = format!("{path}.virtual_hosts[{i}]");
        if vh.hosts.is_empty() {
            errs.add(format!("{vp}.hosts"), "must have at least one item");
        }
        if vh.routes.is_none() {
            errs.add(format!("{vp}.routes"), "is required");
        }
        for (j, h) in vh.hosts.iter().enumerate() {
            let hp = format!("{vp}.hosts[{j}]");
            if h.is_empty() {
                errs.add(&hp, "must not be empty");
            } else if h == "*" {
                if default.is_some() {
                    errs.add(&hp, "only one virtual host may be \"*\"");
                } else if let Some(m) = &vh.routes {
                    let name = if vh.name.is_empty() {
                        format!("{base_name}/*")
                    } else {
                        vh.name.clone()
                    };
                    default = Some((format!("{vp}.routes"), m, name));
                }
            } else if h.starts_with('*') || h.ends_with('*') {
                errs.add(
                    &hp,
                    format!("wildcard host \"{h}\" is not supported (an exact interface or \"*\")"),
                );
            } else if exact.iter().any(|(x, _)| x == h) {
                errs.add(&hp, format!("host \"{h}\" appears twice (hosts must be unique)"));
            } else {
                exact.push((h.clone(), i));
            }
        }
    }
    if let Some(m) = &rc.routes {
        if default.is_some() {
            errs.add(
                format!("{path}.routes"),
                "cannot be given with a \"*\" virtual host (both would be the default)",
            );
        } else {
            default = Some((format!("{path}.routes"), m, base_name.to_string()));
        }
    }
    for (host, i) in &exact {
        let vh = &rc.virtual_hosts[*i];
        let Some(m) = &vh.routes else { continue };
        let name = if vh.name.is_empty() {
            format!("{base_name}/{host}")
        } else {
            vh.name.clone()
        };
        let base = Cond {
            interface: Some(host.clone()),
            ..Default::default()
        };
        let vp = format!("{path}.virtual_hosts[{i}].routes");
        let mut f = Flat {
            errs,
            out,
            name: &name,
            n: 0,
            last: None,
        };
        f.matcher(&vp, m, &base, 0);
        // Envoy does not leave a chosen virtual host: close it unless its last route takes every
        // call of the host already.
        let closed = f.last.as_ref() == Some(&base);
        if default.is_some() && !closed {
            out.push(RawRpcRoute {
                name: Some(format!("{name}/no-route")),
                match_: Some(base.to_match()),
                no_route: Some(true),
                ..Default::default()
            });
        }
    }
    if let Some((dp, m, name)) = default {
        let mut f = Flat {
            errs,
            out,
            name: &name,
            n: 0,
            last: None,
        };
        f.matcher(&dp, m, &Cond::default(), 0);
    }
    if out.len() > MAX_ROUTES {
        errs.add(
            path,
            format!("the match trees flatten into more than {MAX_ROUTES} routes"),
        );
    }
}

/// Flattening state: where routes go and how they are named.
struct Flat<'a> {
    errs: &'a mut ConfigError,
    out: &'a mut Vec<RawRpcRoute>,
    /// The virtual host's name, for routes whose action has none.
    name: &'a str,
    /// Routes made for this virtual host so far.
    n: usize,
    /// The condition of the last of them.
    last: Option<Cond>,
}

impl Flat<'_> {
    fn matcher(&mut self, path: &str, m: &xm::Matcher, base: &Cond, depth: usize) {
        if depth >= MAX_DEPTH {
            self.errs.add(path, format!("matchers nest deeper than {MAX_DEPTH}"));
            return;
        }
        use xm::matcher::MatcherType as T;
        match &m.matcher_type {
            Some(T::MatcherList(l)) => {
                if l.matchers.is_empty() {
                    self.errs
                        .add(format!("{path}.matcher_list.matchers"), "must have at least one item");
                }
                for (i, fm) in l.matchers.iter().enumerate() {
                    let fp = format!("{path}.matcher_list.matchers[{i}]");
                    let alts = match &fm.predicate {
                        None => {
                            self.errs.add(format!("{fp}.predicate"), "is required");
                            continue;
                        }
                        Some(p) => self.predicate(&format!("{fp}.predicate"), p),
                    };
                    let Some(om) = &fm.on_match else {
                        self.errs.add(format!("{fp}.on_match"), "is required");
                        continue;
                    };
                    let conds: Vec<Cond> = alts.iter().filter_map(|a| base.and(a)).collect();
                    self.on_match(&format!("{fp}.on_match"), om, &conds, depth);
                }
            }
            Some(T::MatcherTree(t)) => {
                let tp = format!("{path}.matcher_tree");
                let field = match &t.input {
                    None => {
                        self.errs.add(format!("{tp}.input"), "is required");
                        None
                    }
                    Some(i) => self.input(&format!("{tp}.input"), i),
                };
                use xm::matcher::matcher_tree::TreeType;
                match &t.tree_type {
                    Some(TreeType::ExactMatchMap(mm)) => {
                        let mut keys: Vec<&String> = mm.map.keys().collect();
                        keys.sort();
                        for k in keys {
                            let kp = format!("{tp}.exact_match_map.map[\"{k}\"]");
                            let conds: Vec<Cond> = match &field {
                                Some(f) => base.clone().with(f, k).into_iter().collect(),
                                None => Vec::new(),
                            };
                            self.on_match(&kp, &mm.map[k], &conds, depth);
                        }
                    }
                    Some(TreeType::PrefixMatchMap(_)) => self.errs.add(
                        format!("{tp}.prefix_match_map"),
                        "unsupported (weft matches exact values: use exact_match_map)",
                    ),
                    Some(TreeType::CustomMatch(_)) => self.errs.add(format!("{tp}.custom_match"), "unsupported"),
                    None => self.errs.add(&tp, "exact_match_map is required"),
                }
            }
            None => self.errs.add(path, "matcher_list or matcher_tree is required"),
        }
        if let Some(nm) = &m.on_no_match {
            self.on_match(&format!("{path}.on_no_match"), nm, std::slice::from_ref(base), depth);
        }
    }

    fn on_match(&mut self, path: &str, om: &xm::matcher::OnMatch, conds: &[Cond], depth: usize) {
        if om.keep_matching {
            self.errs.add(
                format!("{path}.keep_matching"),
                "unsupported (a call takes the first route that matches)",
            );
        }
        use xm::matcher::on_match::OnMatch as O;
        match &om.on_match {
            Some(O::Action(a)) => {
                let route = action(self.errs, &format!("{path}.action"), a);
                for c in conds {
                    // One past the limit is enough for `route_configuration` to refuse the lot.
                    if self.out.len() > MAX_ROUTES {
                        return;
                    }
                    let mut r = route.clone();
                    self.n += 1;
                    if r.name.is_none() {
                        r.name = Some(format!("{}/route{}", self.name, self.n));
                    }
                    r.match_ = Some(c.to_match());
                    self.out.push(r);
                    self.last = Some(c.clone());
                }
            }
            Some(O::Matcher(m)) => {
                for c in conds {
                    self.matcher(&format!("{path}.matcher"), m, c, depth + 1);
                }
            }
            None => self.errs.add(path, "matcher or action is required"),
        }
    }

    /// A predicate in disjunctive form: the calls it takes are those of any one alternative.
    fn predicate(&mut self, path: &str, p: &xm::matcher::matcher_list::Predicate) -> Vec<Cond> {
        use xm::matcher::matcher_list::predicate::MatchType as P;
        match &p.match_type {
            Some(P::SinglePredicate(sp)) => self.single(&format!("{path}.single_predicate"), sp),
            Some(P::AndMatcher(l)) => {
                let lp = format!("{path}.and_matcher.predicate");
                if l.predicate.len() < 2 {
                    self.errs.add(&lp, "must have at least 2 items");
                }
                let mut acc = vec![Cond::default()];
                for (i, q) in l.predicate.iter().enumerate() {
                    let alts = self.predicate(&format!("{lp}[{i}]"), q);
                    acc = acc.iter().flat_map(|a| alts.iter().filter_map(|b| a.and(b))).collect();
                    if acc.len() > MAX_ROUTES {
                        self.errs
                            .add(&lp, format!("expands into more than {MAX_ROUTES} alternatives"));
                        return Vec::new();
                    }
                }
                acc
            }
            Some(P::OrMatcher(l)) => {
                let lp = format!("{path}.or_matcher.predicate");
                if l.predicate.len() < 2 {
                    self.errs.add(&lp, "must have at least 2 items");
                }
                let mut acc = Vec::new();
                for (i, q) in l.predicate.iter().enumerate() {
                    acc.extend(self.predicate(&format!("{lp}[{i}]"), q));
                }
                acc
            }
            Some(P::NotMatcher(_)) => {
                self.errs.add(
                    format!("{path}.not_matcher"),
                    "unsupported (weft's routes match by equal values)",
                );
                Vec::new()
            }
            None => {
                self.errs.add(path, "a match type is required");
                Vec::new()
            }
        }
    }

    fn single(&mut self, path: &str, sp: &xm::matcher::matcher_list::predicate::SinglePredicate) -> Vec<Cond> {
        use xm::matcher::matcher_list::predicate::single_predicate::Matcher as M;
        let Some(input) = &sp.input else {
            self.errs.add(format!("{path}.input"), "is required");
            return Vec::new();
        };
        match &sp.matcher {
            Some(M::ValueMatch(sm)) => {
                let Some(field) = self.input(&format!("{path}.input"), input) else {
                    return Vec::new();
                };
                match xds_val(self.errs, &format!("{path}.value_match"), sm, &field) {
                    Some(Val::Exact(v)) => Cond::default().with(&field, &v).into_iter().collect(),
                    Some(Val::Any) => vec![Cond::default()],
                    None => Vec::new(),
                }
            }
            Some(M::CustomMatch(c)) => {
                let url = input.typed_config.as_ref().map(|a| a.type_url.as_str()).unwrap_or("");
                let cp = format!("{path}.custom_match");
                let want = format!("{MATCHER_PKG}RequestMatcher");
                let Some(a) = c.typed_config.as_ref().filter(|a| a.type_url == want) else {
                    self.errs.add(&cp, "unsupported custom matcher (RequestMatcher only)");
                    return Vec::new();
                };
                if url != format!("{MATCHER_PKG}RequestMatchInput") {
                    self.errs
                        .add(format!("{path}.input"), "a RequestMatcher reads RequestMatchInput");
                    return Vec::new();
                }
                match weft_xds_api::unpack::<gm::RequestMatcher>(a, &want) {
                    Ok(rm) => request_matcher(self.errs, &format!("{cp}.typed_config"), &rm)
                        .into_iter()
                        .collect(),
                    Err(e) => {
                        self.errs.add(format!("{cp}.typed_config"), e);
                        Vec::new()
                    }
                }
            }
            None => {
                self.errs.add(path, "value_match or custom_match is required");
                Vec::new()
            }
        }
    }

    /// The field an input reads; `None` (and an error) for an input weft has no field for.
    fn input(&mut self, path: &str, i: &XdsExtension) -> Option<Field> {
        let Some(a) = &i.typed_config else {
            self.errs.add(format!("{path}.typed_config"), "is required");
            return None;
        };
        match a.type_url.strip_prefix(MATCHER_PKG) {
            Some("HostMatchInput" | "ServiceMatchInput" | "PathMatchInput") => Some(Field::Interface),
            Some("MethodMatchInput") => Some(Field::Method),
            Some("PropertyMatchInput") => match weft_xds_api::unpack::<gm::PropertyMatchInput>(a, &a.type_url) {
                Ok(p) if p.property_name.is_empty() => {
                    self.errs
                        .add(format!("{path}.typed_config.property_name"), "must not be empty");
                    None
                }
                Ok(p) => Some(Field::Property(p.property_name)),
                Err(e) => {
                    self.errs.add(format!("{path}.typed_config"), e);
                    None
                }
            },
            Some("RequestMatchInput") => {
                self.errs
                    .add(path, "RequestMatchInput is matched by a custom_match RequestMatcher");
                None
            }
            _ => {
                self.errs.add(
                    format!("{path}.typed_config"),
                    format!("unsupported input \"{}\"", a.type_url),
                );
                None
            }
        }
    }
}

/// A `RequestMatcher`: the conjunction of its fields (`None` when they contradict or fail).
fn request_matcher(errs: &mut ConfigError, path: &str, rm: &gm::RequestMatcher) -> Option<Cond> {
    let mut c = Some(Cond::default());
    let fields = [
        ("host", &rm.host, Field::Interface),
        ("path", &rm.path, Field::Interface),
        ("method", &rm.method, Field::Method),
    ];
    for (name, sm, field) in fields {
        let Some(sm) = sm else { continue };
        match envoy_val(errs, &format!("{path}.{name}"), sm, &field) {
            Some(Val::Exact(v)) => c = c.and_then(|c| c.with(&field, &v)),
            Some(Val::Any) => {}
            None => c = None,
        }
    }
    for (i, kv) in rm.properties.iter().enumerate() {
        let kp = format!("{path}.properties[{i}]");
        if kv.name.is_empty() {
            errs.add(format!("{kp}.name"), "must not be empty");
            c = None;
            continue;
        }
        let field = Field::Property(kv.name.clone());
        match kv.string_match.as_ref() {
            None => {
                errs.add(format!("{kp}.string_match"), "is required");
                c = None;
            }
            Some(sm) => match envoy_val(errs, &format!("{kp}.string_match"), sm, &field) {
                Some(Val::Exact(v)) => c = c.and_then(|c| c.with(&field, &v)),
                _ => c = None,
            },
        }
    }
    c
}

/// `(kind, exact value, is safe_regex ".*")` of a string matcher: xDS and Envoy each define one,
/// of the same shape, under their own names.
macro_rules! pattern {
    ($sm:expr, $($m:ident)::+) => {{
        use $($m)::+::string_matcher::MatchPattern as M;
        match &$sm.match_pattern {
            Some(M::Exact(v)) => ("exact", Some(v.as_str()), false),
            Some(M::SafeRegex(r)) => ("safe_regex", None, r.regex == ".*"),
            Some(M::Prefix(_)) => ("prefix", None, false),
            Some(M::Suffix(_)) => ("suffix", None, false),
            Some(M::Contains(_)) => ("contains", None, false),
            Some(M::Custom(_)) => ("custom", None, false),
            None => ("", None, false),
        }
    }};
}

/// An `xds.type.matcher.v3.StringMatcher` weft can honour for `field`.
fn xds_val(errs: &mut ConfigError, path: &str, sm: &xm::StringMatcher, field: &Field) -> Option<Val> {
    let (kind, exact, any) = pattern!(sm, xm);
    val(errs, path, kind, exact, any, sm.ignore_case, field)
}

/// An `envoy.type.matcher.v3.StringMatcher` weft can honour for `field`.
fn envoy_val(errs: &mut ConfigError, path: &str, sm: &em::StringMatcher, field: &Field) -> Option<Val> {
    let (kind, exact, any) = pattern!(sm, em);
    val(errs, path, kind, exact, any, sm.ignore_case, field)
}

fn val(
    errs: &mut ConfigError,
    path: &str,
    kind: &str,
    exact: Option<&str>,
    any: bool,
    ignore_case: bool,
    field: &Field,
) -> Option<Val> {
    if kind.is_empty() {
        errs.add(path, "a match pattern is required");
        return None;
    }
    if ignore_case {
        errs.add(
            format!("{path}.ignore_case"),
            "unsupported (exact, case-sensitive matching only)",
        );
        return None;
    }
    match (exact, any, field) {
        (Some(""), _, _) => {
            errs.add(format!("{path}.exact"), "must not be empty");
            None
        }
        (Some(v), _, _) => Some(Val::Exact(v.to_string())),
        // A property that is absent matches no pattern in Envoy, `.*` included: weft has no
        // "present" match for attachments.
        (None, true, Field::Interface | Field::Method) => Some(Val::Any),
        _ => {
            let what = if any {
                "safe_regex \".*\" matches any interface or method only".to_string()
            } else {
                "unsupported (exact matching only; safe_regex \".*\" for any interface or method)".to_string()
            };
            errs.add(format!("{path}.{kind}"), what);
            None
        }
    }
}

/// A `RouteAction`: everything of the weft route but its match.
fn action(errs: &mut ConfigError, path: &str, a: &XdsExtension) -> RawRpcRoute {
    let mut r = RawRpcRoute::default();
    let Some(any) = a.typed_config.as_ref().filter(|t| t.type_url == ROUTE_ACTION_URL) else {
        let url = a.typed_config.as_ref().map(|t| t.type_url.as_str()).unwrap_or("");
        errs.add(
            format!("{path}.typed_config"),
            format!("unsupported action \"{url}\" (RouteAction only)"),
        );
        return r;
    };
    let ra = match weft_xds_api::unpack::<action::RouteAction>(any, ROUTE_ACTION_URL) {
        Ok(ra) => ra,
        Err(e) => {
            errs.add(format!("{path}.typed_config"), e);
            return r;
        }
    };
    let p = format!("{path}.typed_config");
    if !ra.name.is_empty() {
        r.name = Some(ra.name.clone());
    }
    use action::route_action::ClusterSpecifier as C;
    r.cluster = match &ra.cluster_specifier {
        Some(C::Cluster(c)) if !c.is_empty() => Some(c.clone()),
        Some(C::Cluster(_)) => {
            errs.add(format!("{p}.cluster"), "must not be empty (min_len: 1)");
            None
        }
        Some(C::WeightedClusters(w)) => match w.clusters.as_slice() {
            [one] if !one.name.is_empty() => Some(one.name.clone()),
            [] => {
                errs.add(format!("{p}.weighted_clusters.clusters"), "must have at least one item");
                None
            }
            _ => {
                errs.add(
                    format!("{p}.weighted_clusters"),
                    "a split over several clusters is not supported (a weft rpc route names one cluster)",
                );
                None
            }
        },
        None => {
            errs.add(format!("{p}.cluster"), "is required");
            None
        }
    };
    r.timeout = match &ra.timeout {
        None => Some(weft_config::typed::Typed::Value(DEFAULT_TIMEOUT)),
        Some(d) if d.seconds == 0 && d.nanos == 0 => {
            errs.add(
                format!("{p}.timeout"),
                "0 (no timeout) is unsupported: weft answers every call within a timeout",
            );
            None
        }
        Some(d) => Some(crate::convert::dur(d)),
    };
    if let Some(rp) = &ra.retry_policy {
        // Envoy's generic router reads num_retries only, as the number of tries (default 1).
        let tries = rp.num_retries.as_ref().map(|v| v.value).unwrap_or(1);
        match tries {
            0 | 1 => {}
            2..=6 => {
                r.retries = Some(RawRpcRetries {
                    attempts: Some(u64::from(tries - 1)),
                    idempotent: Some(false),
                })
            }
            n => errs.add(
                format!("{p}.retry_policy.num_retries"),
                format!("{n} is out of range [1, 6] (weft tries a call at most 6 times)"),
            ),
        }
    }
    if !ra.per_filter_config.is_empty() {
        errs.add(
            format!("{p}.per_filter_config"),
            "unsupported (weft has the router only)",
        );
    }
    r
}
