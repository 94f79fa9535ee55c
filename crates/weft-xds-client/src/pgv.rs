//! The Envoy API's own validation rules (protoc-gen-validate annotations in the `.proto` files:
//! `min_len`, `required`, enum `defined_only`, duration `gt`/`gte`, integer ranges, `min_items`)
//! for the fields weft reads. Envoy refuses a resource that breaks them before looking at it, so
//! weft does too: a control plane that works with weft then works with Envoy, and the other way
//! round. Errors name the field by its Envoy path, like the conversion errors in [`crate::convert`].

// Deprecated fields (header matcher shorthands, `dns_refresh_rate`) are read by the conversion, so
// they are validated too.
#![allow(deprecated)]

use weft_config::errors::join;
use weft_config::ConfigError;
use weft_xds_api::pb::envoy::config::cluster::v3 as cl;
use weft_xds_api::pb::envoy::config::core::v3 as core;
use weft_xds_api::pb::envoy::config::endpoint::v3 as ep;
use weft_xds_api::pb::envoy::config::listener::v3 as ls;
use weft_xds_api::pb::envoy::config::route::v3 as rt;
use weft_xds_api::pb::envoy::extensions::access_loggers::file::v3 as file_log;
use weft_xds_api::pb::envoy::extensions::filters::common::fault::v3 as common_fault;
use weft_xds_api::pb::envoy::extensions::filters::http::fault::v3 as fault;
use weft_xds_api::pb::envoy::extensions::filters::http::local_ratelimit::v3 as lrl;
use weft_xds_api::pb::envoy::extensions::filters::http::ratelimit::v3 as rl;
use weft_xds_api::pb::envoy::extensions::filters::network::connection_limit::v3 as connection_limit;
use weft_xds_api::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
use weft_xds_api::pb::envoy::extensions::filters::network::tcp_proxy::v3 as tcp;
use weft_xds_api::pb::envoy::r#type::matcher::v3 as matcher;
use weft_xds_api::pb::envoy::r#type::v3 as typ;
use weft_xds_api::pb::google::protobuf::{Any, Duration as PbDuration, UInt32Value};
use weft_xds_api::type_url;

/// The rules, checked into the configuration's one field-error collector.
#[derive(Default)]
pub struct V(pub ConfigError);

impl V {
    fn err(&mut self, path: &str, field: &str, msg: impl std::fmt::Display) {
        self.0.add_at(path, field, msg);
    }

    fn min_len(&mut self, path: &str, field: &str, s: &str) {
        if s.is_empty() {
            self.err(path, field, "must not be empty (min_len: 1)");
        }
    }

    fn required<T>(&mut self, path: &str, field: &str, v: &Option<T>) -> bool {
        if v.is_none() {
            self.err(path, field, "is required");
        }
        v.is_some()
    }

    fn min_items<T>(&mut self, path: &str, field: &str, v: &[T]) {
        if v.is_empty() {
            self.err(path, field, "needs at least 1 item (min_items: 1)");
        }
    }

    /// `defined_only`: the value is one of the enum's.
    fn defined<E: TryFrom<i32>>(&mut self, path: &str, field: &str, v: i32) {
        if E::try_from(v).is_err() {
            self.err(path, field, format!("undefined enum value {v} (defined_only)"));
        }
    }

    /// Duration `gt {}` (`strict`) or `gte {}`, when set; `required` too if asked.
    fn duration(&mut self, path: &str, field: &str, d: &Option<PbDuration>, strict: bool, required: bool) {
        match d {
            None if required => self.err(path, field, "is required"),
            None => {}
            Some(d) => {
                if !(0..1_000_000_000).contains(&d.nanos) || d.seconds < 0 {
                    self.err(path, field, format!("invalid duration {}s {}ns", d.seconds, d.nanos));
                } else if strict && d.seconds == 0 && d.nanos == 0 {
                    self.err(path, field, "must be greater than 0s (gt)");
                }
            }
        }
    }

    fn range(&mut self, path: &str, field: &str, v: u64, lo: u64, hi: u64) {
        if v < lo || v > hi {
            self.err(path, field, format!("{v} is out of range [{lo}, {hi}]"));
        }
    }

    fn range32(&mut self, path: &str, field: &str, v: &Option<UInt32Value>, lo: u64, hi: u64) {
        if let Some(v) = v {
            self.range(path, field, u64::from(v.value), lo, hi);
        }
    }

    fn fraction(&mut self, path: &str, field: &str, p: &Option<typ::FractionalPercent>) {
        if let Some(p) = p {
            self.defined::<typ::fractional_percent::DenominatorType>(&join(path, field), "denominator", p.denominator);
        }
    }
}

fn socket_address(v: &mut V, path: &str, a: &Option<core::Address>) {
    let Some(core::address::Address::SocketAddress(sa)) = a.as_ref().and_then(|a| a.address.as_ref()) else {
        return;
    };
    let p = join(path, "socket_address");
    v.min_len(&p, "address", &sa.address);
    v.defined::<core::socket_address::Protocol>(&p, "protocol", sa.protocol);
    match &sa.port_specifier {
        None => v.err(&p, "port_specifier", "is required"),
        Some(core::socket_address::PortSpecifier::PortValue(port)) => {
            v.range(&p, "port_value", u64::from(*port), 0, 65535)
        }
        Some(_) => {}
    }
}

fn decode<M: weft_xds_api::prost::Message + Default>(any: &Any) -> Option<M> {
    M::decode(any.value.as_slice()).ok()
}

// ---------------------------------------------------------------------------------------------
// Listener

pub fn listener(l: &ls::Listener) -> ConfigError {
    let mut v = V::default();
    socket_address(&mut v, "address", &l.address);
    for (i, fc) in l.filter_chains.iter().enumerate() {
        let path = format!("filter_chains[{i}]");
        if let Some(m) = &fc.filter_chain_match {
            let mp = join(&path, "filter_chain_match");
            v.range32(&mp, "destination_port", &m.destination_port, 1, 65535);
            v.defined::<ls::filter_chain_match::ConnectionSourceType>(&mp, "source_type", m.source_type);
            for (j, r) in m.source_prefix_ranges.iter().enumerate() {
                let rp = format!("{mp}.source_prefix_ranges[{j}]");
                v.min_len(&rp, "address_prefix", &r.address_prefix);
                v.range32(&rp, "prefix_len", &r.prefix_len, 0, 128);
            }
        }
        for (j, f) in fc.filters.iter().enumerate() {
            let fp = format!("{path}.filters[{j}]");
            v.min_len(&fp, "name", &f.name);
            let Some(ls::filter::ConfigType::TypedConfig(any)) = &f.config_type else {
                continue;
            };
            let tp = join(&fp, "typed_config");
            match any.type_url.as_str() {
                type_url::HCM => {
                    if let Some(h) = decode::<hcm::HttpConnectionManager>(any) {
                        http_connection_manager(&mut v, &tp, &h);
                    }
                }
                type_url::TCP_PROXY => {
                    if let Some(t) = decode::<tcp::TcpProxy>(any) {
                        v.min_len(&tp, "stat_prefix", &t.stat_prefix);
                        v.required(&tp, "cluster_specifier", &t.cluster_specifier);
                        v.duration(&tp, "idle_timeout", &t.idle_timeout, false, false);
                        access_logs(&mut v, &tp, &t.access_log);
                    }
                }
                crate::convert::CONNECTION_LIMIT_URL => {
                    if let Some(c) = decode::<connection_limit::ConnectionLimit>(any) {
                        v.min_len(&tp, "stat_prefix", &c.stat_prefix);
                        if let Some(m) = &c.max_connections {
                            v.range(&tp, "max_connections", m.value, 1, u64::MAX);
                        }
                        v.duration(&tp, "delay", &c.delay, false, false);
                    }
                }
                _ => {}
            }
        }
    }
    v.0
}

fn access_logs(v: &mut V, path: &str, logs: &[weft_xds_api::pb::envoy::config::accesslog::v3::AccessLog]) {
    use weft_xds_api::pb::envoy::config::accesslog::v3::access_log::ConfigType;
    for (i, l) in logs.iter().enumerate() {
        let Some(ConfigType::TypedConfig(any)) = &l.config_type else {
            continue;
        };
        if any.type_url == type_url::FILE_ACCESS_LOG {
            if let Some(f) = decode::<file_log::FileAccessLog>(any) {
                v.min_len(&format!("{path}.access_log[{i}].typed_config"), "path", &f.path);
            }
        }
    }
}

fn http_connection_manager(v: &mut V, path: &str, h: &hcm::HttpConnectionManager) {
    use hcm::http_connection_manager::RouteSpecifier;
    v.defined::<hcm::http_connection_manager::CodecType>(path, "codec_type", h.codec_type);
    v.min_len(path, "stat_prefix", &h.stat_prefix);
    if v.required(path, "route_specifier", &h.route_specifier) {
        if let Some(RouteSpecifier::RouteConfig(rc)) = &h.route_specifier {
            route_configuration_into(v, &join(path, "route_config"), rc);
        }
    }
    v.range32(path, "max_request_headers_kb", &h.max_request_headers_kb, 1, 8192);
    v.duration(
        path,
        "request_headers_timeout",
        &h.request_headers_timeout,
        false,
        false,
    );
    v.duration(path, "stream_idle_timeout", &h.stream_idle_timeout, false, false);
    if let Some(o) = &h.common_http_protocol_options {
        v.duration(
            &join(path, "common_http_protocol_options"),
            "idle_timeout",
            &o.idle_timeout,
            false,
            false,
        );
    }
    access_logs(v, path, &h.access_log);
    for (i, f) in h.http_filters.iter().enumerate() {
        let fp = format!("{path}.http_filters[{i}]");
        v.min_len(&fp, "name", &f.name);
        let Some(hcm::http_filter::ConfigType::TypedConfig(any)) = &f.config_type else {
            continue;
        };
        let tp = join(&fp, "typed_config");
        match any.type_url.as_str() {
            type_url::FAULT => {
                if let Some(f) = decode::<fault::HttpFault>(any) {
                    http_fault(v, &tp, &f);
                }
            }
            type_url::LOCAL_RATE_LIMIT => {
                if let Some(l) = decode::<lrl::LocalRateLimit>(any) {
                    local_rate_limit(v, &tp, &l);
                }
            }
            crate::convert::RATE_LIMIT_URL => {
                if let Some(r) = decode::<rl::RateLimit>(any) {
                    v.min_len(&tp, "domain", &r.domain);
                    v.range(&tp, "stage", u64::from(r.stage), 0, 10);
                    v.required(&tp, "rate_limit_service", &r.rate_limit_service);
                    v.duration(&tp, "timeout", &r.timeout, false, false);
                }
            }
            _ => {}
        }
    }
}

pub(crate) fn http_fault(v: &mut V, path: &str, f: &fault::HttpFault) {
    if let Some(d) = &f.delay {
        let dp = join(path, "delay");
        match &d.fault_delay_secifier {
            None => v.err(&dp, "fault_delay_secifier", "is required (fixed_delay or header_delay)"),
            Some(common_fault::fault_delay::FaultDelaySecifier::FixedDelay(fd)) => {
                v.duration(&dp, "fixed_delay", &Some(*fd), true, false)
            }
            Some(_) => {}
        }
        v.fraction(&dp, "percentage", &d.percentage);
    }
    if let Some(a) = &f.abort {
        let ap = join(path, "abort");
        match &a.error_type {
            None => v.err(
                &ap,
                "error_type",
                "is required (http_status, grpc_status or header_abort)",
            ),
            Some(fault::fault_abort::ErrorType::HttpStatus(s)) => v.range(&ap, "http_status", u64::from(*s), 200, 599),
            Some(_) => {}
        }
        v.fraction(&ap, "percentage", &a.percentage);
    }
}

pub(crate) fn local_rate_limit(v: &mut V, path: &str, l: &lrl::LocalRateLimit) {
    v.min_len(path, "stat_prefix", &l.stat_prefix);
    if let Some(b) = &l.token_bucket {
        let bp = join(path, "token_bucket");
        v.range32(&bp, "tokens_per_fill", &b.tokens_per_fill, 1, u64::from(u32::MAX));
        v.duration(&bp, "fill_interval", &b.fill_interval, true, true);
    }
}

// ---------------------------------------------------------------------------------------------
// RouteConfiguration

pub fn route_configuration(rc: &rt::RouteConfiguration) -> ConfigError {
    let mut v = V::default();
    route_configuration_into(&mut v, "", rc);
    v.0
}

fn header_options(v: &mut V, path: &str, field: &str, list: &[core::HeaderValueOption]) {
    if list.len() > 1000 {
        v.err(path, field, "more than 1000 items (max_items)");
    }
    for (i, h) in list.iter().enumerate() {
        let hp = format!("{}[{i}]", join(path, field));
        if v.required(&hp, "header", &h.header) {
            if let Some(hv) = &h.header {
                v.min_len(&join(&hp, "header"), "key", &hv.key);
            }
        }
        v.defined::<core::header_value_option::HeaderAppendAction>(&hp, "append_action", h.append_action);
    }
}

fn route_configuration_into(v: &mut V, path: &str, rc: &rt::RouteConfiguration) {
    header_options(v, path, "request_headers_to_add", &rc.request_headers_to_add);
    header_options(v, path, "response_headers_to_add", &rc.response_headers_to_add);
    for (i, vh) in rc.virtual_hosts.iter().enumerate() {
        let vp = join(path, &format!("virtual_hosts[{i}]"));
        v.min_len(&vp, "name", &vh.name);
        v.min_items(&vp, "domains", &vh.domains);
        v.defined::<rt::virtual_host::TlsRequirementType>(&vp, "require_tls", vh.require_tls);
        header_options(v, &vp, "request_headers_to_add", &vh.request_headers_to_add);
        header_options(v, &vp, "response_headers_to_add", &vh.response_headers_to_add);
        if let Some(r) = &vh.retry_policy {
            retry_policy(v, &join(&vp, "retry_policy"), r);
        }
        for (j, r) in vh.rate_limits.iter().enumerate() {
            rate_limit(v, &format!("{vp}.rate_limits[{j}]"), r);
        }
        for (j, r) in vh.routes.iter().enumerate() {
            route(v, &format!("{vp}.routes[{j}]"), r);
        }
    }
}

fn string_matcher(v: &mut V, path: &str, m: &matcher::StringMatcher) {
    use matcher::string_matcher::MatchPattern;
    match &m.match_pattern {
        None => v.err(path, "match_pattern", "is required"),
        Some(MatchPattern::Prefix(s)) => v.min_len(path, "prefix", s),
        Some(MatchPattern::Suffix(s)) => v.min_len(path, "suffix", s),
        Some(MatchPattern::Contains(s)) => v.min_len(path, "contains", s),
        Some(MatchPattern::SafeRegex(r)) => v.min_len(&join(path, "safe_regex"), "regex", &r.regex),
        Some(_) => {}
    }
}

fn route(v: &mut V, path: &str, r: &rt::Route) {
    header_options(v, path, "request_headers_to_add", &r.request_headers_to_add);
    header_options(v, path, "response_headers_to_add", &r.response_headers_to_add);
    match &r.r#match {
        None => v.err(path, "match", "is required"),
        Some(m) => {
            let mp = join(path, "match");
            match &m.path_specifier {
                None => v.err(&mp, "path_specifier", "is required (prefix, path, safe_regex, ...)"),
                Some(rt::route_match::PathSpecifier::SafeRegex(re)) => {
                    v.min_len(&join(&mp, "safe_regex"), "regex", &re.regex)
                }
                Some(_) => {}
            }
            for (i, h) in m.headers.iter().enumerate() {
                let hp = format!("{mp}.headers[{i}]");
                v.min_len(&hp, "name", &h.name);
                use rt::header_matcher::HeaderMatchSpecifier as H;
                match &h.header_match_specifier {
                    Some(H::PrefixMatch(s)) => v.min_len(&hp, "prefix_match", s),
                    Some(H::SuffixMatch(s)) => v.min_len(&hp, "suffix_match", s),
                    Some(H::ContainsMatch(s)) => v.min_len(&hp, "contains_match", s),
                    Some(H::SafeRegexMatch(re)) => v.min_len(&join(&hp, "safe_regex_match"), "regex", &re.regex),
                    Some(H::StringMatch(sm)) => string_matcher(v, &join(&hp, "string_match"), sm),
                    _ => {}
                }
            }
            for (i, q) in m.query_parameters.iter().enumerate() {
                let qp = format!("{mp}.query_parameters[{i}]");
                v.min_len(&qp, "name", &q.name);
                if let Some(rt::query_parameter_matcher::QueryParameterMatchSpecifier::StringMatch(sm)) =
                    &q.query_parameter_match_specifier
                {
                    string_matcher(v, &join(&qp, "string_match"), sm);
                }
            }
        }
    }
    match &r.action {
        None => v.err(path, "action", "is required (route, redirect or direct_response)"),
        Some(rt::route::Action::Route(a)) => route_action(v, &join(path, "route"), a),
        Some(rt::route::Action::Redirect(rd)) => v.defined::<rt::redirect_action::RedirectResponseCode>(
            &join(path, "redirect"),
            "response_code",
            rd.response_code,
        ),
        Some(rt::route::Action::DirectResponse(d)) => {
            v.range(&join(path, "direct_response"), "status", u64::from(d.status), 200, 599)
        }
        Some(_) => {}
    }
}

fn route_action(v: &mut V, path: &str, a: &rt::RouteAction) {
    use rt::route_action::ClusterSpecifier;
    match &a.cluster_specifier {
        None => v.err(
            path,
            "cluster_specifier",
            "is required (cluster, weighted_clusters, ...)",
        ),
        Some(ClusterSpecifier::Cluster(c)) => v.min_len(path, "cluster", c),
        Some(ClusterSpecifier::ClusterHeader(c)) => v.min_len(path, "cluster_header", c),
        Some(ClusterSpecifier::WeightedClusters(w)) => {
            v.min_items(&join(path, "weighted_clusters"), "clusters", &w.clusters);
        }
        Some(_) => {}
    }
    v.duration(path, "timeout", &a.timeout, false, false);
    v.duration(path, "idle_timeout", &a.idle_timeout, false, false);
    v.defined::<core::RoutingPriority>(path, "priority", a.priority);
    if let Some(r) = &a.retry_policy {
        retry_policy(v, &join(path, "retry_policy"), r);
    }
    for (i, h) in a.hash_policy.iter().enumerate() {
        use rt::route_action::hash_policy::PolicySpecifier as P;
        let hp = format!("{path}.hash_policy[{i}]");
        match &h.policy_specifier {
            None => v.err(&hp, "policy_specifier", "is required"),
            Some(P::Header(x)) => v.min_len(&join(&hp, "header"), "header_name", &x.header_name),
            Some(P::Cookie(x)) => v.min_len(&join(&hp, "cookie"), "name", &x.name),
            Some(P::QueryParameter(x)) => v.min_len(&join(&hp, "query_parameter"), "name", &x.name),
            Some(_) => {}
        }
    }
    for (i, m) in a.request_mirror_policies.iter().enumerate() {
        let mp = format!("{path}.request_mirror_policies[{i}]");
        if let Some(f) = &m.runtime_fraction {
            let fp = join(&mp, "runtime_fraction");
            if v.required(&fp, "default_value", &f.default_value) {
                v.fraction(&fp, "default_value", &f.default_value);
            }
        }
    }
    for (i, r) in a.rate_limits.iter().enumerate() {
        rate_limit(v, &format!("{path}.rate_limits[{i}]"), r);
    }
}

fn retry_policy(v: &mut V, path: &str, r: &rt::RetryPolicy) {
    v.duration(path, "per_try_timeout", &r.per_try_timeout, false, false);
    if let Some(b) = &r.retry_back_off {
        let bp = join(path, "retry_back_off");
        v.duration(&bp, "base_interval", &b.base_interval, true, true);
        v.duration(&bp, "max_interval", &b.max_interval, true, false);
    }
}

fn rate_limit(v: &mut V, path: &str, r: &rt::RateLimit) {
    use rt::rate_limit::action::ActionSpecifier as A;
    v.range32(path, "stage", &r.stage, 0, 10);
    v.min_items(path, "actions", &r.actions);
    for (i, a) in r.actions.iter().enumerate() {
        let ap = format!("{path}.actions[{i}]");
        match &a.action_specifier {
            None => v.err(&ap, "action_specifier", "is required"),
            Some(A::RequestHeaders(h)) => {
                let hp = join(&ap, "request_headers");
                v.min_len(&hp, "header_name", &h.header_name);
                v.min_len(&hp, "descriptor_key", &h.descriptor_key);
            }
            Some(A::GenericKey(g)) => v.min_len(&join(&ap, "generic_key"), "descriptor_value", &g.descriptor_value),
            Some(_) => {}
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Cluster

pub fn cluster(c: &cl::Cluster) -> ConfigError {
    let mut v = V::default();
    v.min_len("", "name", &c.name);
    if let Some(cl::cluster::ClusterDiscoveryType::Type(t)) = &c.cluster_discovery_type {
        v.defined::<cl::cluster::DiscoveryType>("", "type", *t);
    }
    v.duration("", "connect_timeout", &c.connect_timeout, true, false);
    v.defined::<cl::cluster::LbPolicy>("", "lb_policy", c.lb_policy);
    v.duration("", "dns_refresh_rate", &c.dns_refresh_rate, true, false);
    if let Some(d) = &c.dns_refresh_rate {
        if d.seconds == 0 && d.nanos <= 1_000_000 && d.nanos > 0 {
            v.err("", "dns_refresh_rate", "must be greater than 1ms (gt)");
        }
    }
    match &c.lb_config {
        Some(cl::cluster::LbConfig::LeastRequestLbConfig(l)) => v.range32(
            "least_request_lb_config",
            "choice_count",
            &l.choice_count,
            2,
            u64::from(u32::MAX),
        ),
        Some(cl::cluster::LbConfig::RingHashLbConfig(r)) => {
            let p = "ring_hash_lb_config";
            if let Some(m) = &r.minimum_ring_size {
                v.range(p, "minimum_ring_size", m.value, 0, 8_388_608);
            }
            if let Some(m) = &r.maximum_ring_size {
                v.range(p, "maximum_ring_size", m.value, 0, 8_388_608);
            }
            v.defined::<cl::cluster::ring_hash_lb_config::HashFunction>(p, "hash_function", r.hash_function);
        }
        Some(cl::cluster::LbConfig::MaglevLbConfig(m)) => {
            if let Some(t) = &m.table_size {
                v.range("maglev_lb_config", "table_size", t.value, 0, 5_000_011);
            }
        }
        _ => {}
    }
    if let Some(cb) = &c.circuit_breakers {
        for (i, t) in cb.thresholds.iter().enumerate() {
            v.defined::<core::RoutingPriority>(&format!("circuit_breakers.thresholds[{i}]"), "priority", t.priority);
        }
    }
    if let Some(o) = &c.outlier_detection {
        let p = "outlier_detection";
        v.duration(p, "interval", &o.interval, true, false);
        v.duration(p, "base_ejection_time", &o.base_ejection_time, true, false);
        v.duration(p, "max_ejection_time", &o.max_ejection_time, true, false);
        for (name, val) in [
            ("max_ejection_percent", &o.max_ejection_percent),
            ("enforcing_consecutive_5xx", &o.enforcing_consecutive_5xx),
            ("enforcing_success_rate", &o.enforcing_success_rate),
            (
                "enforcing_consecutive_gateway_failure",
                &o.enforcing_consecutive_gateway_failure,
            ),
            (
                "enforcing_consecutive_local_origin_failure",
                &o.enforcing_consecutive_local_origin_failure,
            ),
            (
                "enforcing_local_origin_success_rate",
                &o.enforcing_local_origin_success_rate,
            ),
            ("failure_percentage_threshold", &o.failure_percentage_threshold),
            ("enforcing_failure_percentage", &o.enforcing_failure_percentage),
            (
                "enforcing_failure_percentage_local_origin",
                &o.enforcing_failure_percentage_local_origin,
            ),
        ] {
            v.range32(p, name, val, 0, 100);
        }
    }
    for (i, h) in c.health_checks.iter().enumerate() {
        let hp = format!("health_checks[{i}]");
        v.duration(&hp, "timeout", &h.timeout, true, true);
        v.duration(&hp, "interval", &h.interval, true, true);
        v.duration(&hp, "interval_jitter", &h.interval_jitter, false, false);
        v.required(&hp, "unhealthy_threshold", &h.unhealthy_threshold);
        v.required(&hp, "healthy_threshold", &h.healthy_threshold);
        match &h.health_checker {
            None => v.err(&hp, "health_checker", "is required"),
            Some(core::health_check::HealthChecker::HttpHealthCheck(x)) => {
                v.min_len(&join(&hp, "http_health_check"), "path", &x.path)
            }
            Some(_) => {}
        }
    }
    if let Some(cfg) = &c.common_lb_config {
        if let Some(p) = &cfg.healthy_panic_threshold {
            if !(0.0..=100.0).contains(&p.value) {
                v.err(
                    "common_lb_config.healthy_panic_threshold",
                    "value",
                    format!("{} is out of range [0, 100]", p.value),
                );
            }
        }
    }
    if let Some(la) = &c.load_assignment {
        load_assignment_into(&mut v, "load_assignment", la);
    }
    v.0
}

// ---------------------------------------------------------------------------------------------
// ClusterLoadAssignment

pub fn load_assignment(la: &ep::ClusterLoadAssignment) -> ConfigError {
    let mut v = V::default();
    load_assignment_into(&mut v, "", la);
    v.0
}

fn load_assignment_into(v: &mut V, path: &str, la: &ep::ClusterLoadAssignment) {
    // A cluster's inline load_assignment may leave cluster_name empty in practice (Envoy fills it
    // in); an EDS resource may not.
    if path.is_empty() {
        v.min_len(path, "cluster_name", &la.cluster_name);
    }
    for (i, l) in la.endpoints.iter().enumerate() {
        let lp = join(path, &format!("endpoints[{i}]"));
        v.range32(
            &lp,
            "load_balancing_weight",
            &l.load_balancing_weight,
            1,
            u64::from(u32::MAX),
        );
        v.range(&lp, "priority", u64::from(l.priority), 0, 128);
        for (j, e) in l.lb_endpoints.iter().enumerate() {
            let ep = format!("{lp}.lb_endpoints[{j}]");
            v.range32(
                &ep,
                "load_balancing_weight",
                &e.load_balancing_weight,
                1,
                u64::from(u32::MAX),
            );
            v.defined::<core::HealthStatus>(&ep, "health_status", e.health_status);
            if let Some(ep::lb_endpoint::HostIdentifier::Endpoint(x)) = &e.host_identifier {
                socket_address(v, &format!("{ep}.endpoint.address"), &x.address);
            }
        }
    }
}
