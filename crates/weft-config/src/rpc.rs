//! The `rpc` block of a listener: RPC proxying (Dubbo2, SOFARPC Bolt, or `auto`: sniffed per
//! connection, next to the listener's `http` and a `tcp_proxy` fallback) with per-request routing on interface,
//! method, version, group, attachments and argument values. Its YAML shape ([`RawRpc`]), its
//! validation ([`validate`]) and its model ([`RpcProxy`]) live together here so that the shared
//! `raw`/`validate`/`model` files only carry one hook each.

use crate::duration;
use crate::errors::ConfigError;
use crate::model::{
    AccessLog, FaultDelay, LocalRateLimit, LogSink, RateLimitAction, RateLimitPolicy, RateLimitService,
};
use crate::raw::{RawAccessLog, RawDuration, RawFaultDelay, RawLocalRateLimit, RawRateLimitService};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

/// The default largest frame accepted (header and body): 8 MiB, like Dubbo's `payload` default.
pub const DEFAULT_MAX_FRAME_SIZE: u32 = 8 * 1024 * 1024;
/// The default per-request timeout when neither the route nor the listener gives one.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// At most this many distinct method names get their own metric label per listener by default.
pub const DEFAULT_MAX_METHOD_LABELS: u32 = 200;

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawRpc {
    /// `dubbo` (default), `bolt`, or `auto` (each connection's first bytes decide: Dubbo, Bolt,
    /// HTTP via the listener's `http`, anything else via its `tcp_proxy`).
    pub protocol: Option<String>,
    /// `auto` only: how long to wait for a connection's first bytes (default 100ms); a client that
    /// sends nothing first goes to the fallback.
    pub sniff_timeout: Option<RawDuration>,
    pub stat_prefix: Option<String>,
    pub routes: Vec<RawRpcRoute>,
    /// Per-request timeout when the route gives none (default 5s).
    pub timeout: Option<RawDuration>,
    /// Largest frame accepted from either side, header included (default 8 MiB).
    pub max_frame_size: Option<u64>,
    /// Upstream connections per host over which requests are multiplexed (default 1).
    pub connections_per_host: Option<u64>,
    /// A downstream connection with no request in flight and no bytes for this long is closed.
    pub idle_timeout: Option<RawDuration>,
    /// Distinct method names that get their own metric label (default 200); later ones are `other`.
    pub max_method_labels: Option<u64>,
    pub access_log: Option<RawAccessLog>,
    /// Distributed tracing of the RPC requests (the same block as an `http` listener's).
    pub tracing: Option<crate::tracing::RawTracing>,
    /// The global rate limit service the routes' `rate_limits` ask (Envoy's RLS protocol).
    pub rate_limit_service: Option<RawRateLimitService>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawRpcRoute {
    pub name: Option<String>,
    #[serde(rename = "match")]
    pub match_: Option<RawRpcMatch>,
    pub cluster: Option<String>,
    /// Endpoint labels the chosen host must carry (a subset of the cluster).
    pub subset: BTreeMap<String, String>,
    pub timeout: Option<RawDuration>,
    pub retries: Option<RawRpcRetries>,
    pub fault: Option<RawRpcFault>,
    pub rate_limit: Option<RawRpcRateLimit>,
    /// A copy of a share of the route's calls goes to this cluster too; its answers are dropped.
    pub mirror: Option<RawRpcMirror>,
    /// Descriptors sent to the listener's `rate_limit_service` for each call.
    pub rate_limits: Vec<RawRpcRateLimitPolicy>,
    /// Answer the matched calls with the protocol's "no route" reply instead of sending them on
    /// (Dubbo `SERVICE_NOT_FOUND`, Bolt `NO_PROCESSOR`): ends one interface's routes before a
    /// catch-all that must not take its calls. Excludes `cluster` and the route's other actions.
    pub no_route: Option<bool>,
}

/// One descriptor (Envoy's `RateLimit`): sent when every action yields an entry.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawRpcRateLimitPolicy {
    pub actions: Vec<RawRpcRateLimitAction>,
}

/// Exactly one of: an attachment's value (Bolt: a header), the caller's address, a fixed pair.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawRpcRateLimitAction {
    pub attachment: Option<RawAttachmentAction>,
    pub remote_address: Option<crate::raw::RawEmpty>,
    pub generic_key: Option<crate::raw::RawGenericKeyAction>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAttachmentAction {
    pub name: Option<String>,
    pub descriptor_key: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawRpcMirror {
    pub cluster: Option<String>,
    /// Share of calls copied, 0-100 (default 100).
    pub percent: Option<f64>,
}

/// Retries of the route's calls, each on another host of the cluster.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawRpcRetries {
    /// Tries after the first (1-5).
    pub attempts: Option<u64>,
    /// The route's methods are idempotent: a call is retried also when it was sent and its
    /// connection closed before the answer. Otherwise only a call that could not be sent (the
    /// connection to the host failed) is retried.
    pub idempotent: Option<bool>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawRpcFault {
    /// Hold the call this long before sending it upstream.
    pub delay: Option<RawFaultDelay>,
    /// Answer the call with the protocol's service error instead of sending it.
    pub abort: Option<RawRpcAbort>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawRpcAbort {
    /// Share of calls aborted, 0-100 (default 100).
    pub percent: Option<f64>,
}

/// A token bucket for the route's calls (the shape of an `http` route's `rate_limit`, with an
/// attachment instead of a header as the descriptor).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawRpcRateLimit {
    pub max_tokens: Option<u64>,
    pub tokens_per_fill: Option<u64>,
    pub fill_interval: Option<RawDuration>,
    /// One bucket per distinct value of this attachment (Dubbo attachment, Bolt header).
    pub descriptor_attachment: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawRpcMatch {
    /// `dubbo` or `bolt`: only requests of that protocol (for `protocol: auto` listeners).
    pub protocol: Option<String>,
    /// The service interface (Dubbo's service path or its `interface` attachment), exact.
    pub interface: Option<String>,
    pub method: Option<String>,
    pub version: Option<String>,
    pub group: Option<String>,
    /// Attachment values that must be present and equal.
    pub attachments: BTreeMap<String, String>,
    pub arguments: Vec<RawArgMatch>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawArgMatch {
    /// Zero-based argument position.
    pub index: Option<u64>,
    /// The argument's value as text (strings as they are, integers in decimal, `true`/`false`).
    pub equals: Option<String>,
}

#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RpcProtocol {
    Dubbo,
    Bolt,
    /// Sniffed per connection (see [`Sniff`]).
    Auto,
}

/// The default wait for a sniffing listener's first bytes.
pub const DEFAULT_SNIFF_TIMEOUT: Duration = Duration::from_millis(100);

/// A `protocol: auto` listener's other paths (filled in from the listener's `http` and
/// `tcp_proxy` shorthands).
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Sniff {
    #[serde(serialize_with = "ser_dur")]
    pub timeout: Duration,
    /// Where HTTP/1.x and HTTP/2 (and TLS, when the listener terminates it) go.
    pub http: Option<Box<crate::model::HttpConnectionManager>>,
    /// Where everything else goes (including a client that sends nothing first).
    pub fallback: Option<crate::model::TcpProxy>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct RpcProxy {
    pub protocol: RpcProtocol,
    pub stat_prefix: String,
    pub routes: Vec<RpcRoute>,
    #[serde(serialize_with = "ser_dur")]
    pub timeout: Duration,
    pub max_frame_size: u32,
    pub connections_per_host: u32,
    #[serde(serialize_with = "ser_opt_dur")]
    pub idle_timeout: Option<Duration>,
    pub max_method_labels: u32,
    pub access_log: Option<AccessLog>,
    /// `protocol: auto` only.
    pub sniff: Option<Sniff>,
    pub tracing: Option<Box<crate::tracing::Tracing>>,
    pub rate_limit_service: Option<RateLimitService>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct RpcRoute {
    pub name: String,
    #[serde(rename = "match")]
    pub match_: RpcMatch,
    pub cluster: String,
    pub subset: BTreeMap<String, String>,
    #[serde(serialize_with = "ser_opt_dur")]
    pub timeout: Option<Duration>,
    pub retries: Option<RpcRetries>,
    pub fault: Option<RpcFault>,
    pub rate_limit: Option<RpcRateLimit>,
    pub mirror: Option<RpcMirror>,
    /// For the listener's rate limit service. `RequestHeaders::header_name` is an attachment's
    /// name (as written: attachments are case-sensitive).
    pub rate_limits: Vec<RateLimitPolicy>,
    /// Answer matched calls "no route" (`cluster` is empty).
    pub no_route: bool,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct RpcMirror {
    pub cluster: String,
    /// 0-100.
    pub percent: f64,
}

#[derive(Clone, Copy, Debug, Serialize, PartialEq)]
pub struct RpcRetries {
    /// Tries after the first.
    pub attempts: u32,
    /// Also retry a call that was sent (its connection closed before the answer).
    pub idempotent: bool,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct RpcFault {
    pub delay: Option<FaultDelay>,
    /// Share of calls answered with the protocol's service error (0-100).
    pub abort_percent: Option<f64>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct RpcRateLimit {
    /// `descriptor_header` is unused (none).
    pub bucket: LocalRateLimit,
    pub descriptor_attachment: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct RpcMatch {
    /// `dubbo` or `bolt` (the codec's name).
    pub protocol: Option<String>,
    pub interface: Option<String>,
    pub method: Option<String>,
    pub version: Option<String>,
    pub group: Option<String>,
    pub attachments: Vec<(String, String)>,
    pub arguments: Vec<ArgMatch>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ArgMatch {
    pub index: u32,
    pub equals: String,
}

fn ser_dur<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&duration::format(*d))
}

fn ser_opt_dur<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_str(&duration::format(*d)),
        None => s.serialize_none(),
    }
}

/// Validates an `rpc` block into `errors`; `None` when the block is unusable.
pub fn validate(
    path: &str,
    r: &RawRpc,
    clusters: &HashSet<String>,
    allow_unknown_clusters: bool,
    errors: &mut ConfigError,
) -> Option<RpcProxy> {
    let before = errors.len();
    let mut err = |p: String, m: String| errors.add(p, m);
    let protocol = match r.protocol.as_deref() {
        None | Some("dubbo") => RpcProtocol::Dubbo,
        Some("bolt") => RpcProtocol::Bolt,
        Some("auto") => RpcProtocol::Auto,
        Some(o) => {
            err(
                format!("{path}.protocol"),
                format!("unknown value \"{o}\" (dubbo, bolt, auto)"),
            );
            RpcProtocol::Dubbo
        }
    };
    let dur = |p: String, v: &Option<RawDuration>, err: &mut dyn FnMut(String, String)| -> Option<Duration> {
        match v.as_ref()?.get() {
            Ok(d) if d.is_zero() => {
                err(p, "must be greater than zero".into());
                None
            }
            Ok(d) => Some(d),
            Err(e) => {
                err(p, e.to_string());
                None
            }
        }
    };
    let timeout = dur(format!("{path}.timeout"), &r.timeout, &mut err).unwrap_or(DEFAULT_TIMEOUT);
    let idle_timeout = dur(format!("{path}.idle_timeout"), &r.idle_timeout, &mut err);
    let sniff_timeout = dur(format!("{path}.sniff_timeout"), &r.sniff_timeout, &mut err);
    let sniff = match protocol {
        RpcProtocol::Auto => Some(Sniff {
            timeout: sniff_timeout.unwrap_or(DEFAULT_SNIFF_TIMEOUT),
            http: None,
            fallback: None,
        }),
        _ => {
            if r.sniff_timeout.is_some() {
                err(format!("{path}.sniff_timeout"), "only applies to protocol: auto".into());
            }
            None
        }
    };
    if sniff_timeout.is_some_and(|t| t > Duration::from_secs(10)) {
        err(format!("{path}.sniff_timeout"), "must be at most 10s".into());
    }
    let max_frame_size = match r.max_frame_size {
        None => DEFAULT_MAX_FRAME_SIZE,
        Some(n) if (64..=1 << 30).contains(&n) => n as u32,
        Some(n) => {
            err(
                format!("{path}.max_frame_size"),
                format!("{n} is out of range [64, 1073741824]"),
            );
            DEFAULT_MAX_FRAME_SIZE
        }
    };
    let connections_per_host = match r.connections_per_host {
        None => 1,
        Some(n) if (1..=64).contains(&n) => n as u32,
        Some(n) => {
            err(
                format!("{path}.connections_per_host"),
                format!("{n} is out of range [1, 64]"),
            );
            1
        }
    };
    let max_method_labels = match r.max_method_labels {
        None => DEFAULT_MAX_METHOD_LABELS,
        Some(n) if n <= 10_000 => n as u32,
        Some(n) => {
            err(
                format!("{path}.max_method_labels"),
                format!("{n} is out of range [0, 10000]"),
            );
            DEFAULT_MAX_METHOD_LABELS
        }
    };
    if r.routes.is_empty() {
        err(format!("{path}.routes"), "at least one route is required".into());
    }
    let mut routes = Vec::new();
    // Errors of the routes' governance blocks and of the rate limit service, collected apart (`err`
    // borrows `errors`) and added at the end.
    let mut later_errors = ConfigError::default();
    for (i, rr) in r.routes.iter().enumerate() {
        let p = format!("{path}.routes[{i}]");
        let no_route = rr.no_route == Some(true);
        if no_route {
            let actions = [
                ("cluster", rr.cluster.is_some()),
                ("subset", !rr.subset.is_empty()),
                ("timeout", rr.timeout.is_some()),
                ("retries", rr.retries.is_some()),
                ("fault", rr.fault.is_some()),
                ("rate_limit", rr.rate_limit.is_some()),
                ("mirror", rr.mirror.is_some()),
                ("rate_limits", !rr.rate_limits.is_empty()),
            ];
            for (f, set) in actions {
                if set {
                    err(format!("{p}.{f}"), "cannot be given with no_route".into());
                }
            }
        }
        let cluster = match rr.cluster.as_deref() {
            _ if no_route => String::new(),
            Some(c) if !c.is_empty() => {
                if !clusters.contains(c) && !allow_unknown_clusters {
                    err(format!("{p}.cluster"), format!("unknown cluster \"{c}\""));
                }
                c.to_string()
            }
            _ => {
                err(format!("{p}.cluster"), "is required".into());
                continue;
            }
        };
        let rt = dur(format!("{p}.timeout"), &rr.timeout, &mut err);
        let mut m = RpcMatch::default();
        if let Some(rm) = &rr.match_ {
            let nonempty = |f: &str, v: &Option<String>, err: &mut dyn FnMut(String, String)| match v {
                Some(s) if s.is_empty() => {
                    err(
                        format!("{p}.match.{f}"),
                        "must not be empty (leave it out to match any)".into(),
                    );
                    None
                }
                other => other.clone(),
            };
            m.protocol = match rm.protocol.as_deref() {
                None => None,
                Some(p @ ("dubbo" | "bolt")) => Some(p.to_string()),
                Some(o) => {
                    err(
                        format!("{p}.match.protocol"),
                        format!("unknown value \"{o}\" (dubbo, bolt)"),
                    );
                    None
                }
            };
            m.interface = nonempty("interface", &rm.interface, &mut err);
            m.method = nonempty("method", &rm.method, &mut err);
            m.version = nonempty("version", &rm.version, &mut err);
            m.group = nonempty("group", &rm.group, &mut err);
            for (k, v) in &rm.attachments {
                if k.is_empty() {
                    err(
                        format!("{p}.match.attachments"),
                        "an attachment name must not be empty".into(),
                    );
                }
                m.attachments.push((k.clone(), v.clone()));
            }
            for (j, a) in rm.arguments.iter().enumerate() {
                let ap = format!("{p}.match.arguments[{j}]");
                let index = match a.index {
                    Some(n) if n < 256 => n as u32,
                    Some(n) => {
                        err(format!("{ap}.index"), format!("{n} is out of range [0, 255]"));
                        continue;
                    }
                    None => {
                        err(format!("{ap}.index"), "is required".into());
                        continue;
                    }
                };
                let Some(equals) = a.equals.clone() else {
                    err(format!("{ap}.equals"), "is required".into());
                    continue;
                };
                m.arguments.push(ArgMatch { index, equals });
            }
        }
        let retries = rr.retries.as_ref().map(|r| RpcRetries {
            attempts: match r.attempts {
                Some(n) if (1..=5).contains(&n) => n as u32,
                Some(n) => {
                    err(format!("{p}.retries.attempts"), format!("{n} is out of range [1, 5]"));
                    1
                }
                None => {
                    err(format!("{p}.retries.attempts"), "is required".into());
                    1
                }
            },
            idempotent: r.idempotent.unwrap_or(false),
        });
        let mut percent = |fp: String, v: Option<f64>| match v {
            None => 100.0,
            Some(x) if (0.0..=100.0).contains(&x) => x,
            Some(x) => {
                err(fp, format!("{x} is out of range [0, 100]"));
                100.0
            }
        };
        let mut rate_limits = Vec::new();
        for (k, rl) in rr.rate_limits.iter().enumerate() {
            let rp = format!("{p}.rate_limits[{k}]");
            if rl.actions.is_empty() {
                later_errors.add(format!("{rp}.actions"), "needs at least one action");
            }
            let mut actions = Vec::new();
            for (j, a) in rl.actions.iter().enumerate() {
                let ap = format!("{rp}.actions[{j}]");
                let set = [
                    a.attachment.is_some(),
                    a.remote_address.is_some(),
                    a.generic_key.is_some(),
                ];
                if set.iter().filter(|b| **b).count() != 1 {
                    later_errors.add(ap, "set exactly one of attachment, remote_address, generic_key");
                    continue;
                }
                if let Some(at) = &a.attachment {
                    match (at.name.as_deref(), at.descriptor_key.as_deref()) {
                        (Some(n), Some(k)) if !n.is_empty() && !k.is_empty() => {
                            actions.push(RateLimitAction::RequestHeaders {
                                header_name: n.to_string(),
                                descriptor_key: k.to_string(),
                            })
                        }
                        (n, _) => {
                            let f = if n.is_none_or(str::is_empty) {
                                "name"
                            } else {
                                "descriptor_key"
                            };
                            later_errors.add(format!("{ap}.attachment.{f}"), "is required");
                        }
                    }
                } else if a.remote_address.is_some() {
                    actions.push(RateLimitAction::RemoteAddress);
                } else if let Some(g) = &a.generic_key {
                    match g.descriptor_value.as_deref() {
                        Some(v) if !v.is_empty() => actions.push(RateLimitAction::GenericKey {
                            descriptor_key: g.descriptor_key.clone().unwrap_or_else(|| "generic_key".into()),
                            descriptor_value: v.to_string(),
                        }),
                        _ => later_errors.add(format!("{ap}.generic_key.descriptor_value"), "is required"),
                    }
                }
            }
            rate_limits.push(RateLimitPolicy { actions });
        }
        if !rate_limits.is_empty() && r.rate_limit_service.is_none() {
            later_errors.add(format!("{p}.rate_limits"), format!("needs {path}.rate_limit_service"));
        }
        let mirror = rr.mirror.as_ref().and_then(|m| {
            let percent = percent(format!("{p}.mirror.percent"), m.percent);
            match m.cluster.as_deref() {
                Some(c) if !c.is_empty() => {
                    if !clusters.contains(c) && !allow_unknown_clusters {
                        later_errors.add(format!("{p}.mirror.cluster"), format!("unknown cluster \"{c}\""));
                    }
                    Some(RpcMirror {
                        cluster: c.to_string(),
                        percent,
                    })
                }
                _ => {
                    later_errors.add(format!("{p}.mirror.cluster"), "is required");
                    None
                }
            }
        });
        let fault = rr.fault.as_ref().map(|f| {
            let delay = f.delay.as_ref().map(|d| {
                let fixed = match d.fixed.as_ref().map(RawDuration::get) {
                    Some(Ok(x)) => x,
                    Some(Err(e)) => {
                        later_errors.add(format!("{p}.fault.delay.fixed"), e.to_string());
                        Duration::ZERO
                    }
                    None => {
                        later_errors.add(format!("{p}.fault.delay.fixed"), "is required");
                        Duration::ZERO
                    }
                };
                FaultDelay {
                    fixed,
                    percent: percent(format!("{p}.fault.delay.percent"), d.percent),
                }
            });
            let abort_percent = f
                .abort
                .as_ref()
                .map(|a| percent(format!("{p}.fault.abort.percent"), a.percent));
            if delay.is_none() && abort_percent.is_none() {
                later_errors.add(format!("{p}.fault"), "give delay, abort or both");
            }
            RpcFault { delay, abort_percent }
        });
        let rate_limit = rr.rate_limit.as_ref().map(|r| {
            let raw = RawLocalRateLimit {
                max_tokens: r.max_tokens,
                tokens_per_fill: r.tokens_per_fill,
                fill_interval: r.fill_interval.clone(),
                descriptor_header: None,
            };
            let bucket = crate::validate::local_rate_limit_into(&format!("{p}.rate_limit"), &raw, &mut later_errors);
            if r.descriptor_attachment.as_deref() == Some("") {
                later_errors.add(format!("{p}.rate_limit.descriptor_attachment"), "must not be empty");
            }
            RpcRateLimit {
                bucket,
                descriptor_attachment: r.descriptor_attachment.clone(),
            }
        });
        routes.push(RpcRoute {
            name: rr.name.clone().unwrap_or_else(|| format!("route{i}")),
            match_: m,
            cluster,
            subset: rr.subset.clone(),
            timeout: rt,
            retries,
            fault,
            rate_limit,
            mirror,
            rate_limits,
            no_route,
        });
    }
    let access_log = r.access_log.as_ref().map(|a| {
        let sink = match a.path.as_deref() {
            None | Some("stdout") | Some("-") => LogSink::Stdout,
            Some("stderr") => LogSink::Stderr,
            Some("") => {
                err(format!("{path}.access_log.path"), "must not be empty".into());
                LogSink::Stdout
            }
            Some(p) => LogSink::File(p.to_string()),
        };
        if a.grpc.is_some() {
            err(
                format!("{path}.access_log.grpc"),
                "not supported on rpc listeners (weft's JSON record only)".into(),
            );
        }
        // RPC listeners write weft's JSON record only: a format is refused rather than ignored.
        if a.format.is_some() || a.json_format.is_some() {
            err(
                format!("{path}.access_log.format"),
                "not supported on rpc listeners (weft's JSON record only)".into(),
            );
        }
        AccessLog { sink, format: None }
    });
    let tracing = r.tracing.as_ref().and_then(|t| {
        crate::tracing::validate(&format!("{path}.tracing"), t, clusters, allow_unknown_clusters, errors).map(Box::new)
    });
    let rate_limit_service = r.rate_limit_service.as_ref().and_then(|s| {
        crate::validate::rate_limit_service_into(
            &format!("{path}.rate_limit_service"),
            s,
            clusters,
            allow_unknown_clusters,
            &mut later_errors,
        )
    });
    errors.extend(later_errors);
    if errors.len() > before {
        return None;
    }
    Some(RpcProxy {
        protocol,
        stat_prefix: r.stat_prefix.clone().unwrap_or_else(|| "rpc".into()),
        routes,
        timeout,
        max_frame_size,
        connections_per_host,
        idle_timeout,
        max_method_labels,
        access_log,
        sniff,
        tracing,
        rate_limit_service,
    })
}
