//! A client of Envoy's gRPC access-log service
//! (`envoy.service.accesslog.v3.AccessLogService/StreamAccessLogs`), what SkyWalking's OAP and other
//! mesh log pipelines consume.
//!
//! The request path builds an `HTTPAccessLogEntry` (or `TCPAccessLogEntry`) and hands it to a
//! bounded queue with a non-blocking push ([`GrpcLogger::log_http`]); when the queue is full the
//! entry is dropped and counted. A task per logger drains the queue into batches (sent when their
//! encoded size reaches `buffer_size_bytes`, or every `buffer_flush_interval`) and writes each batch
//! as one `StreamAccessLogsMessage` on a long-lived client stream, the first message of every stream
//! carrying the identifier (node and `log_name`), as Envoy does.
//!
//! Nothing here can slow a request: the stream has a small buffer of its own, and a batch that finds
//! it full (a slow collector holding back HTTP/2 flow control), or finds no stream (the collector is
//! unreachable: reconnects wait a jittered, doubling backoff), is dropped and counted. A stream that
//! stays backed up for [`STALL`] is abandoned and reopened. Losses are logged at most once per
//! [`LOG_EVERY`].

use crate::ClusterResolver;
use http::HeaderName;
use prost::Message;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::mpsc;
use weft_config::grpc_log::GrpcAccessLog;
use weft_core::access_log::GrpcLogCounters;
use weft_core::flags::Reason;
use weft_xds_api::pb::envoy::config::core::v3 as core;
use weft_xds_api::pb::envoy::data::accesslog::v3::{HttpAccessLogEntry, ResponseFlags, TcpAccessLogEntry};
use weft_xds_api::pb::envoy::service::accesslog::v3::access_log_service_client::AccessLogServiceClient;
use weft_xds_api::pb::envoy::service::accesslog::v3::stream_access_logs_message::{
    HttpAccessLogEntries, Identifier, LogEntries, TcpAccessLogEntries,
};
use weft_xds_api::pb::envoy::service::accesslog::v3::StreamAccessLogsMessage;
use weft_xds_api::pb::google::protobuf;

/// At most one warning per this interval about lost entries or an unreachable collector.
pub const LOG_EVERY: Duration = Duration::from_secs(10);
/// Limit on connecting to the collector (TCP and the HTTP/2 handshake).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// A stream that accepts nothing for this long is abandoned and reopened.
pub const STALL: Duration = Duration::from_secs(10);
/// Reconnect backoff: from this, doubling up to [`BACKOFF_MAX`], each wait drawn from [d/2, d].
pub const BACKOFF_BASE: Duration = Duration::from_millis(250);
pub const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// Messages (batches) a stream may hold before the collector has taken them.
const STREAM_BUFFER: usize = 4;

/// Which entries a logger sends: an HTTP connection manager's or a TCP proxy's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Http,
    Tcp,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Http => "http",
            Kind::Tcp => "tcp",
        }
    }
}

/// Boxed: a queue slot is a pointer, not two kilobytes.
enum Entry {
    Http(Box<HttpAccessLogEntry>),
    Tcp(Box<TcpAccessLogEntry>),
}

/// One configured gRPC access log: the request path's end of its queue.
pub struct GrpcLogger {
    tx: mpsc::Sender<Entry>,
    counters: GrpcLogCounters,
    request_headers: Vec<HeaderName>,
    response_headers: Vec<HeaderName>,
}

impl GrpcLogger {
    /// `additional_request_headers_to_log`, parsed.
    pub fn request_headers(&self) -> &[HeaderName] {
        &self.request_headers
    }

    /// `additional_response_headers_to_log`, parsed.
    pub fn response_headers(&self) -> &[HeaderName] {
        &self.response_headers
    }

    /// Queues an HTTP entry; drops and counts it when the queue is full. Never waits.
    pub fn log_http(&self, e: HttpAccessLogEntry) {
        self.push(Entry::Http(Box::new(e)));
    }

    /// Queues a TCP entry; drops and counts it when the queue is full. Never waits.
    pub fn log_tcp(&self, e: TcpAccessLogEntry) {
        self.push(Entry::Tcp(Box::new(e)));
    }

    fn push(&self, e: Entry) {
        if self.tx.try_send(e).is_err() {
            self.counters.dropped.inc();
        }
    }
}

/// Starts a logger and its sender task on `rt`. The task ends (after sending what is queued) when
/// the logger is dropped.
pub fn start(
    rt: &tokio::runtime::Handle,
    config: &GrpcAccessLog,
    kind: Kind,
    node: &weft_config::Node,
    counters: GrpcLogCounters,
    resolve: ClusterResolver,
) -> Arc<GrpcLogger> {
    let (tx, rx) = mpsc::channel(config.max_queue_size.max(1) as usize);
    let names = |v: &[String]| {
        v.iter()
            .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
            .collect::<Vec<_>>()
    };
    let logger = GrpcLogger {
        tx,
        counters: counters.clone(),
        request_headers: names(&config.additional_request_headers_to_log),
        response_headers: names(&config.additional_response_headers_to_log),
    };
    let sender = Sender {
        config: config.clone(),
        kind,
        node: node_proto(node),
        counters,
        resolve,
        stream: None,
        retry_at: None,
        backoff: BACKOFF_BASE,
        last_error: None,
        last_log: None,
        reported_drops: 0,
    };
    rt.spawn(sender.run(rx));
    Arc::new(logger)
}

struct Stream {
    tx: mpsc::Sender<StreamAccessLogsMessage>,
    call: tokio::task::JoinHandle<Result<(), tonic::Status>>,
    /// The identifier goes on the first message only.
    first: bool,
    /// Since when the stream has refused batches (its buffer full).
    full_since: Option<Instant>,
}

struct Sender {
    config: GrpcAccessLog,
    kind: Kind,
    node: core::Node,
    counters: GrpcLogCounters,
    resolve: ClusterResolver,
    stream: Option<Stream>,
    retry_at: Option<Instant>,
    backoff: Duration,
    last_error: Option<String>,
    last_log: Option<Instant>,
    reported_drops: u64,
}

impl Sender {
    async fn run(mut self, mut rx: mpsc::Receiver<Entry>) {
        let mut batch: Vec<Entry> = Vec::new();
        let mut bytes = 0usize;
        let limit = self.config.buffer_size_bytes as usize;
        let mut tick = tokio::time::interval(self.config.buffer_flush_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                e = rx.recv() => match e {
                    Some(e) => {
                        bytes += match &e {
                            Entry::Http(h) => h.encoded_len(),
                            Entry::Tcp(t) => t.encoded_len(),
                        };
                        batch.push(e);
                        if bytes >= limit {
                            self.flush(&mut batch).await;
                            bytes = 0;
                        }
                    }
                    None => {
                        self.flush(&mut batch).await;
                        break;
                    }
                },
                _ = tick.tick() => {
                    self.flush(&mut batch).await;
                    bytes = 0;
                    self.report();
                }
            }
        }
        // The logger is gone: end the stream (the collector sees a clean end) and let it finish.
        if let Some(s) = self.stream.take() {
            drop(s.tx);
            let mut call = s.call;
            if tokio::time::timeout(Duration::from_secs(1), &mut call).await.is_err() {
                call.abort();
            }
        }
    }

    async fn flush(&mut self, batch: &mut Vec<Entry>) {
        if batch.is_empty() {
            return;
        }
        let n = batch.len() as u64;
        let entries = std::mem::take(batch);
        if !self.ensure_stream().await {
            self.counters.dropped.inc_by(n);
            return;
        }
        let Some(s) = self.stream.as_mut() else { return };
        let log_entries = match self.kind {
            Kind::Http => LogEntries::HttpLogs(HttpAccessLogEntries {
                log_entry: entries
                    .into_iter()
                    .filter_map(|e| match e {
                        Entry::Http(h) => Some(*h),
                        Entry::Tcp(_) => None,
                    })
                    .collect(),
            }),
            Kind::Tcp => LogEntries::TcpLogs(TcpAccessLogEntries {
                log_entry: entries
                    .into_iter()
                    .filter_map(|e| match e {
                        Entry::Tcp(t) => Some(*t),
                        Entry::Http(_) => None,
                    })
                    .collect(),
            }),
        };
        let msg = StreamAccessLogsMessage {
            identifier: s.first.then(|| Identifier {
                node: Some(self.node.clone()),
                log_name: self.config.log_name.clone(),
            }),
            log_entries: Some(log_entries),
        };
        match s.tx.try_send(msg) {
            Ok(()) => {
                s.first = false;
                s.full_since = None;
                self.counters.sent.inc_by(n);
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.counters.dropped.inc_by(n);
                let since = *s.full_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= STALL {
                    self.stream_ended("the collector took nothing for 10s".into());
                }
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.counters.dropped.inc_by(n);
                self.stream_ended("the stream closed".into());
            }
        }
    }

    /// Whether a stream is open, opening one when the backoff allows.
    async fn ensure_stream(&mut self) -> bool {
        if let Some(s) = &self.stream {
            if !s.call.is_finished() {
                return true;
            }
            let s = self.stream.take().expect("checked");
            let why = match s.call.await {
                Ok(Ok(())) => "the collector ended the stream".to_string(),
                Ok(Err(status)) => format!(
                    "the collector ended the stream: {:?}: {}",
                    status.code(),
                    status.message()
                ),
                Err(e) => e.to_string(),
            };
            self.stream_ended(why);
        }
        if self.retry_at.is_some_and(|t| Instant::now() < t) {
            return false;
        }
        match self.connect().await {
            Ok(s) => {
                self.stream = Some(s);
                self.retry_at = None;
                self.backoff = BACKOFF_BASE;
                self.counters.streams.inc();
                true
            }
            Err(e) => {
                self.counters.stream_failures.inc();
                self.wait_before_retry(e);
                false
            }
        }
    }

    fn stream_ended(&mut self, why: String) {
        if let Some(s) = self.stream.take() {
            s.call.abort();
        }
        self.counters.stream_failures.inc();
        self.wait_before_retry(why);
    }

    fn wait_before_retry(&mut self, why: String) {
        let d = self.backoff;
        let wait = d / 2 + d.mul_f64(fastrand::f64() / 2.0);
        self.retry_at = Some(Instant::now() + wait);
        self.backoff = (d * 2).min(BACKOFF_MAX);
        tracing::debug!(log_name = %self.config.log_name, error = %why, "gRPC access log stream unavailable");
        self.last_error = Some(why);
    }

    async fn connect(&self) -> Result<Stream, String> {
        let addr = (self.resolve)(&self.config.cluster)
            .ok_or_else(|| format!("no endpoint to pick in cluster \"{}\"", self.config.cluster))?;
        let ep = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| e.to_string())?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true);
        let channel = tokio::time::timeout(CONNECT_TIMEOUT, ep.connect())
            .await
            .map_err(|_| format!("connecting to {addr} timed out"))?
            .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
        let mut client = AccessLogServiceClient::new(channel);
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let call = tokio::spawn(async move {
            client
                .stream_access_logs(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await
                .map(|_| ())
        });
        Ok(Stream {
            tx,
            call,
            first: true,
            full_since: None,
        })
    }

    /// A warning, at most once per [`LOG_EVERY`], when entries were lost since the last one.
    fn report(&mut self) {
        let dropped = self.counters.dropped.get();
        if dropped == self.reported_drops || self.last_log.is_some_and(|t| t.elapsed() < LOG_EVERY) {
            return;
        }
        tracing::warn!(
            log_name = %self.config.log_name,
            cluster = %self.config.cluster,
            dropped = dropped - self.reported_drops,
            last_error = self.last_error.as_deref().unwrap_or("-"),
            "gRPC access log entries dropped"
        );
        self.reported_drops = dropped;
        self.last_log = Some(Instant::now());
    }
}

/// The identifier's node: the proxy's `node` section, as weft's xDS client sends it.
pub fn node_proto(n: &weft_config::Node) -> core::Node {
    let fields = n
        .metadata
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                protobuf::Value {
                    kind: Some(protobuf::value::Kind::StringValue(v.clone())),
                },
            )
        })
        .collect();
    core::Node {
        id: n.id.clone(),
        cluster: n.cluster.clone(),
        metadata: Some(protobuf::Struct { fields }),
        locality: Some(core::Locality {
            region: n.locality.region.clone(),
            zone: n.locality.zone.clone(),
            sub_zone: n.locality.sub_zone.clone(),
        }),
        user_agent_name: "weft".into(),
        user_agent_version_type: Some(core::node::UserAgentVersionType::UserAgentVersion(
            env!("CARGO_PKG_VERSION").into(),
        )),
        ..Default::default()
    }
}

/// Envoy's `ResponseFlags` for weft's reason (and `upstream_retry_limit_exceeded` when an
/// upstream failure came after more than one attempt, Envoy's `URX`).
pub fn response_flags(reason: Option<Reason>, attempts: u32) -> Option<ResponseFlags> {
    let r = reason?;
    let mut f = ResponseFlags::default();
    match r {
        Reason::NoRoute => f.no_route_found = true,
        Reason::NoHealthyUpstream => f.no_healthy_upstream = true,
        Reason::UpstreamConnectFailure => f.upstream_connection_failure = true,
        Reason::UpstreamReset => f.upstream_connection_termination = true,
        Reason::UpstreamTimeout => f.upstream_request_timeout = true,
        Reason::Overflow => f.upstream_overflow = true,
        Reason::UpstreamProtocolError => f.upstream_protocol_error = true,
        Reason::DownstreamProtocolError => f.downstream_protocol_error = true,
        Reason::DownstreamDisconnect => f.downstream_connection_termination = true,
        Reason::DirectResponse | Reason::Rbac | Reason::JwtAuthn => return None,
        Reason::FaultInjected => f.fault_injected = true,
        Reason::RateLimited | Reason::GlobalRateLimited => f.rate_limited = true,
        Reason::RateLimitServiceError => f.rate_limit_service_error = true,
        Reason::NoCluster => f.no_cluster_found = true,
    }
    if attempts > 1 && r.is_upstream_failure() {
        f.upstream_retry_limit_exceeded = true;
    }
    Some(f)
}

/// A random version 4 UUID: the `stream_id` of a TCP session (Envoy's too; an HTTP entry's is
/// its request id).
pub fn random_stream_id() -> String {
    let (a, b) = (fastrand::u64(..), fastrand::u64(..));
    let a = (a & 0xffff_ffff_ffff_0fff) | 0x4000;
    let b = (b & 0x3fff_ffff_ffff_ffff) | 0x8000_0000_0000_0000;
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xffff,
        b >> 48,
        b & 0xffff_ffff_ffff
    )
}

/// An `Address` holding `ip:port`.
pub fn address(a: SocketAddr) -> core::Address {
    core::Address {
        address: Some(core::address::Address::SocketAddress(core::SocketAddress {
            address: a.ip().to_string(),
            port_specifier: Some(core::socket_address::PortSpecifier::PortValue(u32::from(a.port()))),
            ..Default::default()
        })),
    }
}

pub fn timestamp(t: SystemTime) -> protobuf::Timestamp {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    protobuf::Timestamp {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

pub fn duration(d: Duration) -> protobuf::Duration {
    protobuf::Duration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_follow_envoy() {
        assert!(response_flags(None, 1).is_none());
        assert!(response_flags(Some(Reason::DirectResponse), 0).is_none());
        let f = response_flags(Some(Reason::NoRoute), 0).unwrap();
        assert!(f.no_route_found && !f.upstream_retry_limit_exceeded);
        let f = response_flags(Some(Reason::UpstreamConnectFailure), 2).unwrap();
        assert!(f.upstream_connection_failure && f.upstream_retry_limit_exceeded);
        let f = response_flags(Some(Reason::GlobalRateLimited), 0).unwrap();
        assert!(f.rate_limited);
    }

    #[test]
    fn stream_ids_are_v4_uuids() {
        let id = random_stream_id();
        assert_eq!(id.len(), 36, "{id}");
        assert_eq!(&id[14..15], "4", "{id}");
        assert!(matches!(&id[19..20], "8" | "9" | "a" | "b"), "{id}");
        assert_ne!(id, random_stream_id());
    }
}
