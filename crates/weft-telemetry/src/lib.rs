//! weft's trace exporter.
//!
//! The request path hands finished exchanges ([`weft_core::trace::TraceExchange`]) to a bounded queue
//! (see [`weft_core::trace::Tracer`]); the task spawned here drains it in batches, turns each
//! exchange into its OTLP spans (a server span, and a client span when the request was forwarded),
//! encoded straight to protobuf ([`otlp`]), and sends them to the collector over OTLP/gRPC
//! (`TraceService/Export`) or OTLP/HTTP (protobuf body, `POST /v1/traces`).
//!
//! Failure never reaches the request path: every export has a timeout; while an export is in flight
//! the queue keeps filling and, when full, the request path drops records and counts them
//! (`weft_tracing_dropped`); spans of a failed export are counted (`weft_tracing_export_failed_spans`)
//! and logged at most once per [`LOG_EVERY`].

pub mod als;
pub mod otlp;
#[cfg(test)]
mod reference;

use bytes::{Buf, BufMut, Bytes};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use prost::Message;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use weft_config::{OtlpProtocol, TraceEndpoint, Tracing};
use weft_core::trace::{hex, TraceCounters, TraceExchange, TraceReceiver, Tracer};

/// A batch is sent when full, and whatever is queued at least this often.
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
        encoder: otlp::Encoder::new(&config.service_name, instance),
        config,
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

/// The OTLP/gRPC method.
const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

struct Exporter {
    config: Arc<Tracing>,
    encoder: otlp::Encoder,
    counters: TraceCounters,
    resolve: ClusterResolver,
    grpc: Option<(String, tonic::client::Grpc<tonic::transport::Channel>)>,
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
    /// Wakes when a batch's worth is queued or every [`BATCH_DELAY`], drains the queue in batches
    /// and exports them; ends (after a last export) when the tracer is gone.
    async fn run(mut self, mut q: TraceReceiver) {
        let batch_size = self.config.batch_size.max(1) as usize;
        let mut batch: Vec<Box<TraceExchange>> = Vec::with_capacity(batch_size);
        loop {
            tokio::select! {
                _ = q.batch_ready.notified() => {}
                _ = tokio::time::sleep(BATCH_DELAY) => {}
            }
            let mut closed = false;
            loop {
                while batch.len() < batch_size {
                    match q.rx.try_recv() {
                        Ok(x) => batch.push(x),
                        Err(tokio::sync::mpsc::error::TryRecvError::Empty) => break,
                        Err(tokio::sync::mpsc::error::TryRecvError::Disconnected) => {
                            closed = true;
                            break;
                        }
                    }
                }
                if batch.is_empty() {
                    break;
                }
                let full = batch.len() == batch_size;
                self.send(&mut batch).await;
                if !full {
                    break;
                }
            }
            if closed {
                break;
            }
        }
    }

    /// Encodes and exports `batch`, then empties it (the boxes come from the queue as they are).
    #[allow(clippy::vec_box)]
    async fn send(&mut self, batch: &mut Vec<Box<TraceExchange>>) {
        let (req, spans) = self.encoder.encode(batch);
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
    /// Sends one encoded `ExportTraceServiceRequest`.
    async fn export(&mut self, req: Bytes) -> Result<u64, ExportError> {
        let addr = self.address()?;
        let resp = match self.config.protocol {
            OtlpProtocol::Grpc => self.export_grpc(addr, req).await?,
            OtlpProtocol::Http => self.export_http(addr, req).await?,
        };
        Ok(resp
            .partial_success
            .map_or(0, |p| u64::try_from(p.rejected_spans).unwrap_or(0)))
    }

    async fn export_grpc(&mut self, addr: String, req: Bytes) -> Result<ExportTraceServiceResponse, ExportError> {
        if self.grpc.as_ref().is_none_or(|(a, _)| *a != addr) {
            let ep = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                .map_err(|e| ExportError::Connect(e.to_string()))?
                .connect_timeout(self.config.export_timeout)
                .timeout(self.config.export_timeout);
            self.grpc = Some((addr.clone(), tonic::client::Grpc::new(ep.connect_lazy())));
        }
        let Some((_, client)) = self.grpc.as_mut() else {
            return Err(ExportError::NoEndpoint(addr));
        };
        if let Err(e) = client.ready().await {
            self.grpc = None;
            return Err(ExportError::Connect(e.to_string()));
        }
        let path = http::uri::PathAndQuery::from_static(EXPORT_PATH);
        match client.unary(tonic::Request::new(req), path, EncodedRequest).await {
            Ok(r) => Ok(r.into_inner()),
            Err(s) => {
                self.grpc = None;
                Err(ExportError::Rejected(format!("{:?}: {}", s.code(), s.message())))
            }
        }
    }

    async fn export_http(&mut self, addr: String, req: Bytes) -> Result<ExportTraceServiceResponse, ExportError> {
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
        let body = req;
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
}

/// The gRPC codec of an export: the request is already protobuf ([`otlp::Encoder`]), the response
/// is decoded with the generated type.
#[derive(Clone, Copy, Default)]
struct EncodedRequest;

impl Codec for EncodedRequest {
    type Encode = Bytes;
    type Decode = ExportTraceServiceResponse;
    type Encoder = EncodedRequest;
    type Decoder = EncodedRequest;

    fn encoder(&mut self) -> Self::Encoder {
        EncodedRequest
    }

    fn decoder(&mut self) -> Self::Decoder {
        EncodedRequest
    }
}

impl Encoder for EncodedRequest {
    type Item = Bytes;
    type Error = tonic::Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for EncodedRequest {
    type Item = ExportTraceServiceResponse;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, tonic::Status> {
        let n = src.remaining();
        ExportTraceServiceResponse::decode(src.copy_to_bytes(n))
            .map(Some)
            .map_err(|e| tonic::Status::internal(format!("export response: {e}")))
    }
}

/// The hex trace id of an exchange (for logs and tests).
pub fn trace_id_hex(x: &TraceExchange) -> String {
    hex(&x.trace_id)
}
