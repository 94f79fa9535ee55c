//! weft's trace exporter.
//!
//! The request path hands finished exchanges ([`weft_core::trace::TraceExchange`]) to a bounded queue
//! (see [`weft_core::trace::Tracer`]); the task spawned here drains it in batches, turns each
//! exchange into its OTLP spans (a server span, and a client span when the request was forwarded)
//! and sends them to the collector over OTLP/gRPC (`TraceService/Export`) or OTLP/HTTP (protobuf body,
//! `POST /v1/traces`).
//!
//! Failure never reaches the request path: every export has a timeout; while an export is in flight
//! the queue keeps filling and, when full, the request path drops records and counts them
//! (`weft_tracing_dropped`); spans of a failed export are counted (`weft_tracing_export_failed_spans`)
//! and logged at most once per [`LOG_EVERY`].

pub mod als;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    span::SpanKind, status::StatusCode, ResourceSpans, ScopeSpans, Span, Status,
};
use prost::Message;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use weft_config::{OtlpProtocol, TraceEndpoint, Tracing};
use weft_core::trace::{hex, ClientSpan, RpcSpan, TcpSpan, TraceCounters, TraceExchange, TraceReceiver, Tracer};

/// A batch is sent when full or when its oldest record has waited this long.
pub const BATCH_DELAY: Duration = Duration::from_millis(500);
/// At most one warning per this interval about a failing collector.
pub const LOG_EVERY: Duration = Duration::from_secs(10);

/// Picks an address of a cluster named as the tracing endpoint (the proxy knows its clusters).
pub type ClusterResolver = Arc<dyn Fn(&str) -> Option<SocketAddr> + Send + Sync>;

/// Starts tracing for one connection manager: the tracer the request path uses, and its exporter
/// task on `rt`. The task ends (after a last export) when the tracer is dropped.
pub fn start(
    rt: &tokio::runtime::Handle,
    config: &Tracing,
    instance: &str,
    counters: TraceCounters,
    resolve: ClusterResolver,
) -> Arc<Tracer> {
    let config = Arc::new(config.clone());
    let (tracer, rx) = Tracer::new(config.clone(), instance.to_string(), counters.clone());
    let exporter = Exporter {
        config,
        instance: instance.to_string(),
        counters,
        resolve,
        grpc: None,
        http: None,
        last_log: None,
        failed_since_log: 0,
    };
    rt.spawn(exporter.run(rx));
    Arc::new(tracer)
}

struct Exporter {
    config: Arc<Tracing>,
    instance: String,
    counters: TraceCounters,
    resolve: ClusterResolver,
    grpc: Option<(String, TraceServiceClient<tonic::transport::Channel>)>,
    http: Option<(
        String,
        hyper::client::conn::http1::SendRequest<http_body_util::Full<bytes::Bytes>>,
    )>,
    last_log: Option<Instant>,
    failed_since_log: u64,
}

#[derive(Debug)]
enum ExportError {
    NoEndpoint(String),
    Timeout,
    Connect(String),
    Rejected(String),
}

impl std::fmt::Display for ExportError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExportError::NoEndpoint(e) => write!(f, "no address for tracing endpoint {e}"),
            ExportError::Timeout => write!(f, "export timed out"),
            ExportError::Connect(e) => write!(f, "cannot reach the collector: {e}"),
            ExportError::Rejected(e) => write!(f, "collector refused the export: {e}"),
        }
    }
}

impl Exporter {
    async fn run(mut self, mut rx: TraceReceiver) {
        let batch_size = self.config.batch_size.max(1) as usize;
        let mut batch: Vec<Box<TraceExchange>> = Vec::with_capacity(batch_size);
        loop {
            let Some(first) = rx.recv().await else { break };
            batch.push(first);
            let deadline = tokio::time::Instant::now() + BATCH_DELAY;
            let mut closed = false;
            while batch.len() < batch_size {
                tokio::select! {
                    r = rx.recv() => match r {
                        Some(x) => batch.push(x),
                        None => { closed = true; break; }
                    },
                    _ = tokio::time::sleep_until(deadline) => break,
                }
            }
            let spans = batch
                .iter()
                .map(|x| 1 + u64::from(x.client.is_some() && x.tcp.is_none()))
                .sum::<u64>();
            let req = self.request(&batch);
            batch.clear();
            let timeout = self.config.export_timeout;
            match tokio::time::timeout(timeout, self.export(req)).await {
                Ok(Ok(rejected)) => {
                    self.counters.exported.inc_by(spans.saturating_sub(rejected));
                    self.counters.export_failed.inc_by(rejected.min(spans));
                }
                Ok(Err(e)) => self.failed(spans, e),
                Err(_) => {
                    // A half-done call may leave the connection in doubt: start afresh next time.
                    self.grpc = None;
                    self.http = None;
                    self.failed(spans, ExportError::Timeout)
                }
            }
            if closed {
                break;
            }
        }
    }

    fn failed(&mut self, spans: u64, e: ExportError) {
        self.counters.export_failed.inc_by(spans);
        self.failed_since_log += spans;
        if self.last_log.is_none_or(|t| t.elapsed() >= LOG_EVERY) {
            tracing::warn!(error = %e, spans_lost = self.failed_since_log, "trace export failed");
            self.last_log = Some(Instant::now());
            self.failed_since_log = 0;
        }
    }

    fn address(&self) -> Result<String, ExportError> {
        match &self.config.endpoint {
            TraceEndpoint::Address(a) => Ok(a.clone()),
            TraceEndpoint::Cluster(c) => (self.resolve)(c)
                .map(|a| a.to_string())
                .ok_or_else(|| ExportError::NoEndpoint(c.clone())),
        }
    }

    /// Sends one request; returns the number of spans the collector says it rejected.
    async fn export(&mut self, req: ExportTraceServiceRequest) -> Result<u64, ExportError> {
        let addr = self.address()?;
        let resp = match self.config.protocol {
            OtlpProtocol::Grpc => self.export_grpc(addr, req).await?,
            OtlpProtocol::Http => self.export_http(addr, req).await?,
        };
        Ok(resp
            .partial_success
            .map_or(0, |p| u64::try_from(p.rejected_spans).unwrap_or(0)))
    }

    async fn export_grpc(
        &mut self,
        addr: String,
        req: ExportTraceServiceRequest,
    ) -> Result<ExportTraceServiceResponse, ExportError> {
        if self.grpc.as_ref().is_none_or(|(a, _)| *a != addr) {
            let ep = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                .map_err(|e| ExportError::Connect(e.to_string()))?
                .connect_timeout(self.config.export_timeout)
                .timeout(self.config.export_timeout);
            self.grpc = Some((addr.clone(), TraceServiceClient::new(ep.connect_lazy())));
        }
        let Some((_, client)) = self.grpc.as_mut() else {
            return Err(ExportError::NoEndpoint(addr));
        };
        match client.export(req).await {
            Ok(r) => Ok(r.into_inner()),
            Err(s) => {
                self.grpc = None;
                Err(ExportError::Rejected(format!("{:?}: {}", s.code(), s.message())))
            }
        }
    }

    async fn export_http(
        &mut self,
        addr: String,
        req: ExportTraceServiceRequest,
    ) -> Result<ExportTraceServiceResponse, ExportError> {
        let reuse = self.http.as_ref().is_some_and(|(a, s)| *a == addr && !s.is_closed());
        if !reuse {
            let stream = tokio::net::TcpStream::connect(&addr)
                .await
                .map_err(|e| ExportError::Connect(e.to_string()))?;
            let _ = stream.set_nodelay(true);
            let (send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| ExportError::Connect(e.to_string()))?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            self.http = Some((addr.clone(), send));
        }
        let Some((_, send)) = self.http.as_mut() else {
            return Err(ExportError::NoEndpoint(addr));
        };
        send.ready().await.map_err(|e| ExportError::Connect(e.to_string()))?;
        let body = bytes::Bytes::from(req.encode_to_vec());
        let request = http::Request::post(self.config.http_path.as_str())
            .header(http::header::HOST, addr.as_str())
            .header(http::header::CONTENT_TYPE, "application/x-protobuf")
            .body(http_body_util::Full::new(body))
            .map_err(|e| ExportError::Connect(e.to_string()))?;
        let resp = send.send_request(request).await.map_err(|e| {
            self.http = None;
            ExportError::Connect(e.to_string())
        })?;
        let status = resp.status();
        let body = http_body_util::BodyExt::collect(resp.into_body())
            .await
            .map_err(|e| ExportError::Connect(e.to_string()))?
            .to_bytes();
        if !status.is_success() {
            return Err(ExportError::Rejected(format!("HTTP {status}")));
        }
        Ok(ExportTraceServiceResponse::decode(body).unwrap_or_default())
    }

    fn request(&self, batch: &[Box<TraceExchange>]) -> ExportTraceServiceRequest {
        let mut spans = Vec::with_capacity(batch.len() * 2);
        for x in batch {
            to_spans(x, &mut spans);
        }
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![
                        kv("service.name", s(&self.config.service_name)),
                        kv("service.instance.id", s(&self.instance)),
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
}

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
    let (host, port) = match x.host.as_ref().and_then(|h| h.to_str().ok()) {
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
    };
    let mut attrs = Vec::with_capacity(12);
    common(&mut attrs);
    peer_attrs(x, &mut attrs);
    attrs.push(kv("rpc.response.status_code", s(&x.status.to_string())));
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
        let client_error = c.status.is_none() || !rpc.upstream_ok;
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

fn split_host_port(h: &str) -> (&str, Option<u16>) {
    if let Some(rest) = h.strip_prefix('[') {
        // [v6]:port
        return match rest.split_once(']') {
            Some((ip, tail)) => (ip, tail.strip_prefix(':').and_then(|p| p.parse().ok())),
            None => (h, None),
        };
    }
    match h.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => match port.parse() {
            Ok(p) => (host, Some(p)),
            Err(_) => (h, None),
        },
        _ => (h, None),
    }
}

/// The hex trace id of an exchange (for logs and tests).
pub fn trace_id_hex(x: &TraceExchange) -> String {
    hex(&x.trace_id)
}
