//! The OTLP message of a batch built field by field with opentelemetry-proto's generated types: the
//! oracle the hand-written encoder ([`crate::otlp`]) is checked against.

use crate::otlp::{split_host_port, Encoder};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    span::SpanKind, status::StatusCode, ResourceSpans, ScopeSpans, Span, Status,
};
use prost::Message;
use std::net::SocketAddr;
use weft_core::trace::{ClientSpan, RpcSpan, TcpSpan, TraceExchange};

fn kv(key: &str, v: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue { value: Some(v) }),
    }
}

fn s(v: &str) -> any_value::Value {
    any_value::Value::StringValue(v.to_string())
}

fn i(v: i64) -> any_value::Value {
    any_value::Value::IntValue(v)
}

/// The OTLP spans of one exchange: the server span and, when it was forwarded, the client span.
/// Attribute names follow OpenTelemetry's HTTP semantic conventions; weft's own are `weft.*`.
pub fn to_spans(x: &TraceExchange, out: &mut Vec<Span>) {
    if let Some(rpc) = &x.rpc {
        return rpc_spans(x, rpc, out);
    }
    if let Some(tcp) = &x.tcp {
        return out.push(tcp_span(x, tcp));
    }
    let method = x.method.as_str();
    let (host, port) = match x.host() {
        Some(h) => split_host_port(h),
        None => ("", None),
    };
    let mut attrs = vec![
        kv("http.request.method", s(method)),
        kv("url.path", s(x.uri.path())),
        kv("url.scheme", s("http")),
        kv("http.response.status_code", i(i64::from(x.status))),
    ];
    peer_attrs(x, &mut attrs);
    if !host.is_empty() {
        attrs.push(kv("server.address", s(host)));
    }
    if let Some(p) = port {
        attrs.push(kv("server.port", i(i64::from(p))));
    }
    if let Some(q) = x.uri.query() {
        attrs.push(kv("url.query", s(q)));
    }
    weft_attrs(x, &mut attrs);
    // OpenTelemetry: a server span is an error for 5xx only; weft's reason codes for local failures too.
    let error = x.status >= 500 || x.reason.is_some_and(|r| r != "DR");
    let name = match &x.route {
        Some(r) => format!("{method} {r}"),
        None => method.to_string(),
    };
    out.push(server_span(x, name, attrs, error));
    if let Some(c) = &x.client {
        let mut attrs = vec![
            kv("http.request.method", s(method)),
            kv("url.path", s(x.uri.path())),
            kv("weft.upstream.cluster", s(&c.cluster)),
            kv("weft.attempts", i(i64::from(c.attempts))),
        ];
        upstream_attrs(c.host, &mut attrs);
        if let Some(st) = c.status {
            attrs.push(kv("http.response.status_code", i(i64::from(st))));
        }
        // The client span failed when no response came back (the reason says why) or it was a 4xx/5xx.
        let client_error = c.status.is_none_or(|st| st >= 400);
        out.push(client_span(x, c, method.to_string(), attrs, client_error));
    }
}

/// The OTLP spans of one RPC request (Dubbo, Bolt), after OpenTelemetry's RPC semantic
/// conventions: named `service/method`, `rpc.system`, `rpc.service`, `rpc.method`, the protocol's
/// status code in `rpc.response.status_code`, plus weft's own `weft.*`.
fn rpc_spans(x: &TraceExchange, rpc: &RpcSpan, out: &mut Vec<Span>) {
    let name = format!("{}/{}", rpc.service, rpc.method);
    let common = |attrs: &mut Vec<KeyValue>| {
        attrs.push(kv("rpc.system", s(rpc.system)));
        attrs.push(kv("rpc.service", s(&rpc.service)));
        attrs.push(kv("rpc.method", s(&rpc.method)));
        if rpc.one_way {
            attrs.push(kv("weft.one_way", any_value::Value::BoolValue(true)));
        }
    };
    let mut attrs = Vec::with_capacity(12);
    common(&mut attrs);
    peer_attrs(x, &mut attrs);
    if !rpc.one_way {
        attrs.push(kv("rpc.response.status_code", s(&x.status.to_string())));
    }
    weft_attrs(x, &mut attrs);
    let error = !rpc.ok || x.reason.is_some();
    out.push(server_span(x, name.clone(), attrs, error));
    if let Some(c) = &x.client {
        let mut attrs = Vec::with_capacity(12);
        common(&mut attrs);
        attrs.push(kv("weft.upstream.cluster", s(&c.cluster)));
        upstream_attrs(c.host, &mut attrs);
        if let Some(st) = c.status {
            attrs.push(kv("rpc.response.status_code", s(&st.to_string())));
        }
        let client_error = (c.status.is_none() && !rpc.one_way) || !rpc.upstream_ok;
        out.push(client_span(x, c, name, attrs, client_error));
    }
}

/// The one span of a TCP proxy session (kind `SERVER`, from accept to close), named
/// `tcp CLUSTER`, with its byte counts.
fn tcp_span(x: &TraceExchange, t: &TcpSpan) -> Span {
    let mut attrs = vec![
        kv("network.transport", s("tcp")),
        kv("weft.upstream.cluster", s(&t.cluster)),
        kv("weft.bytes_received", i(t.bytes_received as i64)),
        kv("weft.bytes_sent", i(t.bytes_sent as i64)),
        kv("weft.attempts", i(i64::from(t.attempts))),
    ];
    peer_attrs(x, &mut attrs);
    if let Some(h) = t.host {
        attrs.push(kv("server.address", s(&h.ip().to_string())));
        attrs.push(kv("server.port", i(i64::from(h.port()))));
        attrs.push(kv("weft.upstream.host", s(&h.to_string())));
    }
    if let Some(r) = x.reason {
        attrs.push(kv("weft.reason", s(r)));
    }
    if x.forced {
        attrs.push(kv("weft.force_sampled", any_value::Value::BoolValue(true)));
    }
    Span {
        trace_id: x.trace_id.to_vec(),
        span_id: x.server_span.to_vec(),
        flags: 0x100 | u32::from(x.sampled),
        name: format!("tcp {}", t.cluster),
        kind: SpanKind::Server as i32,
        start_time_unix_nano: x.start_unix_nanos,
        end_time_unix_nano: x.start_unix_nanos + x.server_nanos,
        attributes: attrs,
        status: Some(status(x.reason.is_some(), x.reason)),
        ..Default::default()
    }
}

/// The downstream peer: `network.peer.*` and `client.address`.
fn peer_attrs(x: &TraceExchange, attrs: &mut Vec<KeyValue>) {
    let ip = x.peer.ip().to_string();
    attrs.push(kv("network.peer.address", s(&ip)));
    attrs.push(kv("network.peer.port", i(i64::from(x.peer.port()))));
    attrs.push(kv("client.address", s(&ip)));
}

/// weft's own attributes of a server span: route, reason, forced sampling, the upstream cluster,
/// and the SkyWalking context it continued.
fn weft_attrs(x: &TraceExchange, attrs: &mut Vec<KeyValue>) {
    if let Some(r) = &x.route {
        attrs.push(kv("weft.route", s(r)));
    }
    if let Some(r) = x.reason {
        attrs.push(kv("weft.reason", s(r)));
    }
    if x.forced {
        attrs.push(kv("weft.force_sampled", any_value::Value::BoolValue(true)));
    }
    if let Some(c) = &x.client {
        attrs.push(kv("weft.upstream.cluster", s(&c.cluster)));
    }
    if let Some(sw) = x.parent.as_ref().and_then(|p| p.sw8.as_deref()) {
        attrs.push(kv("skywalking.trace_id", s(&sw.trace_id)));
        attrs.push(kv("skywalking.parent.segment_id", s(&sw.parent_segment)));
        attrs.push(kv("skywalking.parent.span_id", i(i64::from(sw.parent_span))));
        attrs.push(kv("skywalking.parent.service", s(&sw.parent_service)));
        attrs.push(kv("skywalking.parent.service_instance", s(&sw.parent_instance)));
        attrs.push(kv("skywalking.parent.endpoint", s(&sw.parent_endpoint)));
    }
}

/// The upstream host a client span reached (none when no connection was made).
fn upstream_attrs(host: Option<SocketAddr>, attrs: &mut Vec<KeyValue>) {
    if let Some(h) = host {
        let ip = h.ip().to_string();
        attrs.push(kv("server.address", s(&ip)));
        attrs.push(kv("server.port", i(i64::from(h.port()))));
        attrs.push(kv("network.peer.address", s(&ip)));
        attrs.push(kv("network.peer.port", i(i64::from(h.port()))));
        attrs.push(kv("weft.upstream.host", s(&h.to_string())));
    }
}

/// The server span of an exchange (kind `SERVER`, child of the caller's span when there was one).
fn server_span(x: &TraceExchange, name: String, attrs: Vec<KeyValue>, error: bool) -> Span {
    Span {
        trace_id: x.trace_id.to_vec(),
        span_id: x.server_span.to_vec(),
        trace_state: x
            .tracestate
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string(),
        parent_span_id: x.parent.as_ref().map(|p| p.span_id.to_vec()).unwrap_or_default(),
        flags: 0x100 | if x.parent.is_some() { 0x200 } else { 0 } | u32::from(x.sampled),
        name,
        kind: SpanKind::Server as i32,
        start_time_unix_nano: x.start_unix_nanos,
        end_time_unix_nano: x.start_unix_nanos + x.server_nanos,
        attributes: attrs,
        status: Some(status(error, x.reason)),
        ..Default::default()
    }
}

/// The client span of a forwarded exchange (child of its server span). When no response came
/// back, the exchange's reason says why, in `weft.reason` and the status message.
fn client_span(x: &TraceExchange, c: &ClientSpan, name: String, mut attrs: Vec<KeyValue>, error: bool) -> Span {
    let reason = if c.status.is_none() { x.reason } else { None };
    if let Some(r) = reason {
        attrs.push(kv("weft.reason", s(r)));
    }
    Span {
        trace_id: x.trace_id.to_vec(),
        span_id: c.span_id.to_vec(),
        parent_span_id: x.server_span.to_vec(),
        flags: 0x100 | 0x200 | u32::from(x.sampled),
        name,
        kind: SpanKind::Client as i32,
        start_time_unix_nano: c.start_unix_nanos,
        end_time_unix_nano: c.start_unix_nanos + c.nanos,
        attributes: attrs,
        status: Some(status(error, reason)),
        ..Default::default()
    }
}

fn status(error: bool, reason: Option<&str>) -> Status {
    if error {
        Status {
            code: StatusCode::Error as i32,
            message: reason.unwrap_or("").to_string(),
        }
    } else {
        Status::default()
    }
}

pub fn request(service: &str, instance: &str, batch: &[Box<TraceExchange>]) -> ExportTraceServiceRequest {
    let mut spans = Vec::with_capacity(batch.len() * 2);
    for x in batch {
        to_spans(x, &mut spans);
    }
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![
                    kv("service.name", s(service)),
                    kv("service.instance.id", s(instance)),
                    kv("telemetry.sdk.name", s("weft")),
                    kv("telemetry.sdk.language", s("rust")),
                ],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "weft".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    ..Default::default()
                }),
                spans,
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderValue, Method, Uri};
    use std::time::Instant;
    use weft_config::Propagator;
    use weft_core::trace::{Parent, Sw8Context};

    fn exchange(uri: &str, peer: &str) -> TraceExchange {
        TraceExchange {
            trace_id: [0x4b; 16],
            server_span: [7; 8],
            sampled: true,
            forced: false,
            start_unix_nanos: 1_764_000_000_123_456_789,
            start: Instant::now(),
            server_nanos: 1_500_000,
            method: Method::GET,
            uri: uri.parse::<Uri>().unwrap(),
            host: None,
            tracestate: None,
            peer: peer.parse().unwrap(),
            parent: None,
            client: None,
            status: 200,
            reason: None,
            route: None,
            rpc: None,
            tcp: None,
            b3_flags: false,
        }
    }

    fn client(host: Option<&str>, status: Option<u16>) -> ClientSpan {
        ClientSpan {
            span_id: [9; 8],
            start_unix_nanos: 1_764_000_000_124_000_000,
            start: Instant::now(),
            nanos: 900_000,
            cluster: "reviews".into(),
            host: host.map(|h| h.parse().unwrap()),
            attempts: 2,
            status,
        }
    }

    fn parent(format: Propagator, sw8: bool) -> Parent {
        Parent {
            trace_id: [0x4b; 16],
            span_id: [3; 8],
            sampled: Some(true),
            format,
            sw8: sw8.then(|| {
                Box::new(Sw8Context {
                    trace_id: "sw-trace.1".into(),
                    parent_segment: "seg".into(),
                    parent_span: 4,
                    parent_service: "svc-a".into(),
                    parent_instance: "a-1".into(),
                    parent_endpoint: "/x".into(),
                    target_address: "b:80".into(),
                })
            }),
        }
    }

    #[test]
    fn encoder_matches_the_generated_types() {
        let mut batch: Vec<Box<TraceExchange>> = Vec::new();
        // HTTP, continued from a W3C caller, forwarded and answered.
        let mut x = exchange("http://reviews.default:9080/r/1?x=1", "10.1.2.3:40000");
        x.parent = Some(parent(Propagator::W3c, false));
        x.tracestate = Some(HeaderValue::from_static("vendor=1"));
        x.route = Some("reviews-route".into());
        x.client = Some(client(Some("127.0.0.1:8080"), Some(200)));
        batch.push(Box::new(x));
        // HTTP, a new trace failed locally and force-sampled; host header only, IPv6 peer.
        let mut x = exchange("/health", "[::1]:5000");
        x.sampled = false;
        x.forced = true;
        x.host = Some(HeaderValue::from_static("ratings"));
        x.status = 503;
        x.reason = Some("UF");
        x.client = Some(client(None, None));
        batch.push(Box::new(x));
        // HTTP, upstream 404, IPv6 upstream, a SkyWalking caller, no client.
        let mut x = exchange("/a", "192.168.100.255:1");
        x.method = Method::POST;
        x.host = Some(HeaderValue::from_static("[fe80::1]:8443"));
        x.parent = Some(parent(Propagator::Sw8, true));
        x.client = Some(client(Some("[2001:db8::7]:443"), Some(404)));
        batch.push(Box::new(x));
        let mut x = exchange("/direct", "1.2.3.4:5");
        x.reason = Some("DR");
        x.status = 302;
        batch.push(Box::new(x));
        // RPC, answered with an error by the upstream.
        let mut x = exchange("/", "127.0.0.1:7");
        x.rpc = Some(Box::new(RpcSpan {
            system: "apache_dubbo",
            service: "org.apache.dubbo.Greeter".into(),
            method: "sayHello".into(),
            ok: false,
            upstream_ok: false,
            one_way: false,
        }));
        x.status = 70;
        x.parent = Some(parent(Propagator::B3, true));
        x.client = Some(client(Some("127.0.0.1:20880"), Some(70)));
        batch.push(Box::new(x));
        // RPC, one-way, sent.
        let mut x = exchange("/", "127.0.0.1:7");
        x.rpc = Some(Box::new(RpcSpan {
            system: "apache_dubbo",
            service: "org.apache.dubbo.Greeter".into(),
            method: "note".into(),
            ok: true,
            upstream_ok: true,
            one_way: true,
        }));
        x.status = 0;
        x.client = Some(client(Some("127.0.0.1:20880"), None));
        batch.push(Box::new(x));
        // RPC, timed out locally.
        let mut x = exchange("/", "127.0.0.1:7");
        x.rpc = Some(Box::new(RpcSpan {
            system: "sofarpc",
            service: "com.x.S".into(),
            method: "m".into(),
            ok: false,
            upstream_ok: false,
            one_way: false,
        }));
        x.reason = Some("UT");
        x.client = Some(client(None, None));
        batch.push(Box::new(x));
        // TCP sessions: connected, and refused.
        let mut x = exchange("/", "127.0.0.1:9");
        x.tcp = Some(Box::new(TcpSpan {
            cluster: "db".into(),
            host: Some("127.0.0.1:5432".parse().unwrap()),
            bytes_received: 1 << 40,
            bytes_sent: 0,
            attempts: 1,
        }));
        batch.push(Box::new(x));
        let mut x = exchange("/", "127.0.0.1:9");
        x.tcp = Some(Box::new(TcpSpan {
            cluster: "db".into(),
            ..TcpSpan::default()
        }));
        x.reason = Some("UF");
        x.forced = true;
        x.sampled = false;
        batch.push(Box::new(x));

        let mut enc = Encoder::new("productpage", "node-1");
        for round in 0..2 {
            let (bytes, n) = enc.encode(&batch);
            let got = ExportTraceServiceRequest::decode(bytes).unwrap();
            let want = request("productpage", "node-1", &batch);
            let spans = &want.resource_spans[0].scope_spans[0].spans;
            assert_eq!(n as usize, spans.len(), "round {round}");
            assert_eq!(spans.len(), 15);
            for (i, (g, w)) in got.resource_spans[0].scope_spans[0].spans.iter().zip(spans).enumerate() {
                assert_eq!(g, w, "span {i}");
            }
            assert_eq!(got, want, "round {round}");
        }
        let (bytes, n) = enc.encode(&[]);
        assert_eq!(n, 0);
        assert_eq!(
            ExportTraceServiceRequest::decode(bytes).unwrap(),
            request("productpage", "node-1", &[])
        );
    }
}
