//! L4 TCP proxy: pick an upstream, connect (trying other hosts on failure), then copy both ways with
//! half-close propagated and an idle timeout.

use crate::access_log::{timestamp, AccessLogger};
use crate::cluster::Host;
use crate::server::ListenerRt;
use crate::stats::ListenerStats;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use weft_config::{Discovery, TcpProxy};
use weft_upstream::ClusterLookup;

const MAX_CONNECT_ATTEMPTS: usize = 3;

pub struct TcpRt {
    pub config: TcpProxy,
    pub listener: String,
    pub stats: Arc<ListenerStats>,
    pub access_log: Option<Arc<AccessLogger>>,
    /// Entries for Envoy's gRPC access-log service (`TCPAccessLogEntry`).
    pub grpc_log: Option<Arc<weft_telemetry::als::GrpcLogger>>,
    /// Istio-standard TCP metrics (on unless the node's metadata turns them off).
    pub istio: Option<Arc<weft_core::istio_tcp::IstioTcpReporter>>,
    /// One span per session, when the filter configures tracing.
    pub tracer: Option<Arc<weft_core::trace::Tracer>>,
    /// Who may connect (Envoy's network RBAC): a denied connection is closed at once.
    pub authz: Option<weft_route::authz::Authorizer>,
}

impl TcpRt {
    pub fn new(
        config: &TcpProxy,
        listener: &str,
        stats: Arc<ListenerStats>,
        access_log: Option<Arc<AccessLogger>>,
    ) -> TcpRt {
        TcpRt {
            authz: None,
            config: config.clone(),
            listener: listener.to_string(),
            stats,
            access_log,
            grpc_log: None,
            istio: None,
            tracer: None,
        }
    }

    pub fn with_tracer(mut self, tracer: Option<Arc<weft_core::trace::Tracer>>) -> TcpRt {
        self.tracer = tracer;
        self
    }

    pub fn with_grpc_log(mut self, l: Option<Arc<weft_telemetry::als::GrpcLogger>>) -> TcpRt {
        self.grpc_log = l;
        self
    }

    /// Compiles the proxy's `authorization` block with the listener's counters.
    pub fn with_authz(mut self, metrics: &crate::stats::Metrics) -> TcpRt {
        self.authz = self.config.authorization.as_ref().map(|a| {
            let [allowed, denied, shadow_allowed, shadow_denied] = metrics.filters.rbac(&self.listener);
            weft_route::authz::Authorizer::new(
                a,
                Some(weft_route::authz::AuthzCounters {
                    allowed,
                    denied,
                    shadow_allowed,
                    shadow_denied,
                }),
            )
        });
        self
    }

    pub fn with_istio(mut self, istio: Option<Arc<weft_core::istio_tcp::IstioTcpReporter>>) -> TcpRt {
        self.istio = istio;
        self
    }
}

/// The address a connection was sent to before an iptables REDIRECT/TPROXY rule caught it.
pub fn original_dst(stream: &TcpStream) -> Option<SocketAddr> {
    let sock = socket2::SockRef::from(stream);
    let local = stream.local_addr().ok()?;
    let dst = if local.is_ipv4() {
        sock.original_dst_v4().ok()?
    } else {
        sock.original_dst_v6().ok()?
    };
    let dst = dst.as_socket()?;
    // Without a redirect rule the "original" destination is the listener itself: proxying to it
    // would loop forever.
    (dst != local).then_some(dst)
}

pub async fn serve_connection(
    down: TcpStream,
    peer: SocketAddr,
    rt: Arc<TcpRt>,
    lrt: Arc<ListenerRt>,
    clusters: &dyn ClusterLookup,
) {
    let start = Instant::now();
    let started_at = SystemTime::now();
    let trace = rt.tracer.as_ref().map(|t| t.start_tcp(peer));
    // The original destination (a getsockopt), read at most once: authorization's destination
    // port and an original_dst cluster's target both use it.
    let mut dst: Option<Option<SocketAddr>> = None;
    if let Some(a) = &rt.authz {
        let orig = *dst.get_or_insert_with(|| crate::interception::original_dst(&down, &lrt.config));
        let local = orig.or_else(|| down.local_addr().ok());
        // Plain TCP: no peer certificate (weft terminates TLS only for HTTP), so `authenticated`
        // principals never match here.
        let d = a.check(&weft_route::authz::AuthzInput {
            http: None,
            principal: None,
            direct_remote: peer.ip(),
            remote: peer.ip(),
            local,
            sni: None,
        });
        if !d.allowed {
            tracing::debug!(listener = %rt.listener, %peer, details = ?d.details, "connection denied by authorization");
            let end = TcpEnd {
                peer,
                local,
                upstream: None,
                started_at,
                start,
                sent: 0,
                received: 0,
                flag: "-",
                reason: Some(crate::flags::Reason::Rbac),
                attempts: 0,
            };
            end.log(&rt);
            end.trace(&rt, trace);
            // Dropping the stream closes the connection (a FIN, like Envoy's network RBAC).
            return;
        }
    }
    let Some(cluster) = clusters.cluster(&rt.config.cluster) else {
        return;
    };
    let orig = match cluster.config.discovery {
        Discovery::OriginalDst => *dst.get_or_insert_with(|| crate::interception::original_dst(&down, &lrt.config)),
        _ => None,
    };
    let local = match rt.access_log.as_ref().and_then(|l| l.format()).is_some() || rt.grpc_log.is_some() {
        true => orig.or_else(|| down.local_addr().ok()),
        false => None,
    };
    let Connect {
        connected,
        tried,
        flag,
        reason,
        attempts,
    } = connect(&cluster, peer, orig, &lrt).await;
    let mut end = TcpEnd {
        peer,
        local,
        upstream: tried.as_ref().map(|h| h.address),
        started_at,
        start,
        sent: 0,
        received: 0,
        flag,
        reason,
        attempts,
    };
    let Some((up, _cx_guard, host, _active)) = connected else {
        if let Some(i) = &rt.istio {
            i.opened(flag);
            i.closed(flag, 0, 0);
        }
        end.log(&rt);
        end.trace(&rt, trace);
        return;
    };
    if let Some(i) = &rt.istio {
        i.opened("-");
    }
    let drain = lrt.drain_signal();
    let (sent, received) = copy_bidirectional(down, up, rt.config.idle_timeout, drain, lrt.stop.clone()).await;
    cluster.stats.tx_bytes.inc_by(sent);
    cluster.stats.rx_bytes.inc_by(received);
    if let Some(i) = &rt.istio {
        i.closed("-", sent, received);
    }
    end.upstream = Some(host.address);
    // Logged from the client's side: bytes received from it, bytes sent to it.
    (end.received, end.sent) = (sent, received);
    (end.flag, end.reason) = ("-", None);
    end.log(&rt);
    end.trace(&rt, trace);
}

/// How connecting upstream went: the connection (with its guards and host), else the last host
/// tried and why it failed.
struct Connect {
    connected: Option<(
        TcpStream,
        weft_upstream::cluster::ConnGuard,
        Arc<Host>,
        crate::cluster::ActiveRequest,
    )>,
    tried: Option<Arc<Host>>,
    flag: &'static str,
    reason: Option<crate::flags::Reason>,
    attempts: u32,
}

/// Up to [`MAX_CONNECT_ATTEMPTS`] connection attempts, each to another host (by the client's IP
/// hash), or to the original destination for an `original_dst` cluster.
async fn connect(
    cluster: &Arc<weft_upstream::ClusterRt>,
    peer: SocketAddr,
    orig: Option<SocketAddr>,
    lrt: &ListenerRt,
) -> Connect {
    let hash = Some(weft_lb::hash_key(peer.ip().to_string().as_bytes()));
    let mut out = Connect {
        connected: None,
        tried: None,
        flag: "-",
        reason: None,
        attempts: 0,
    };
    for _ in 0..MAX_CONNECT_ATTEMPTS {
        let host = match (&cluster.config.discovery, orig) {
            (Discovery::OriginalDst, Some(a)) => {
                let from_peer = cluster.config.original_source || lrt.config.original_source;
                cluster.original_dst_host_from(a, from_peer.then(|| (peer.ip(), lrt.config.original_source_mark)))
            }
            (Discovery::OriginalDst, None) => {
                (out.flag, out.reason) = ("UH", Some(crate::flags::Reason::NoHealthyUpstream));
                break;
            }
            _ => match cluster.pick(hash, out.tried.as_ref(), None) {
                Some(h) => h,
                None => {
                    (out.flag, out.reason) = ("UH", Some(crate::flags::Reason::NoHealthyUpstream));
                    break;
                }
            },
        };
        let Some(active) = cluster.start_request(&host, weft_config::RoutePriority::Default) else {
            (out.flag, out.reason) = ("UO", Some(crate::flags::Reason::Overflow));
            break;
        };
        out.attempts += 1;
        match cluster.connect_raw(&host).await {
            Ok((s, guard)) => {
                cluster.report(&host, crate::outlier::Outcome::Status(200));
                out.connected = Some((s, guard, host, active));
                break;
            }
            Err(e) => {
                tracing::debug!(cluster = %cluster.name(), host = %host.address, error = %e, "TCP upstream connect failed");
                host.rq_error.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if e.counts_against_host() {
                    cluster.report(&host, crate::outlier::Outcome::LocalFailure);
                }
                (out.flag, out.reason) = (e.reason.code(), Some(e.reason));
                out.tried = Some(host);
            }
        }
    }
    out
}

/// What a TCP session's access-log line says.
struct TcpEnd {
    peer: SocketAddr,
    local: Option<SocketAddr>,
    upstream: Option<SocketAddr>,
    started_at: SystemTime,
    start: Instant,
    /// Bytes sent to the client.
    sent: u64,
    /// Bytes received from the client.
    received: u64,
    flag: &'static str,
    reason: Option<crate::flags::Reason>,
    attempts: u32,
}

impl TcpEnd {
    fn trace(&self, rt: &TcpRt, trace: Option<Box<weft_core::trace::TraceExchange>>) {
        if let (Some(t), Some(ex)) = (&rt.tracer, trace) {
            let span = weft_core::trace::TcpSpan {
                cluster: rt.config.cluster.clone(),
                host: self.upstream,
                bytes_received: self.received,
                bytes_sent: self.sent,
                attempts: self.attempts,
            };
            t.finish_tcp(ex, span, self.reason);
        }
    }

    fn log(&self, rt: &TcpRt) {
        if let Some(g) = &rt.grpc_log {
            g.log_tcp(self.grpc_entry(rt));
        }
        let Some(l) = &rt.access_log else { return };
        if l.format().is_some() {
            l.log_entry(&weft_core::log_format::LogEntry {
                start_time: self.started_at,
                duration: self.start.elapsed(),
                protocol: None,
                method: None,
                path: None,
                authority: None,
                scheme: None,
                req_headers: &[],
                resp_headers: &[],
                response_code: 0,
                reason: self.reason,
                attempts: self.attempts,
                bytes_received: self.received,
                bytes_sent: self.sent,
                upstream_host: self.upstream,
                upstream_cluster: Some(&rt.config.cluster),
                upstream_local: None,
                downstream_local: self.local,
                downstream_remote: self.peer,
                peer_identity: None,
                requested_server_name: None,
                route_name: None,
                details: None,
            });
            return;
        }
        let (peer, upstream, started_at, start) = (self.peer, self.upstream, self.started_at, self.start);
        let (sent, received, flag) = (self.sent, self.received, self.flag);
        l.log(&serde_json::json!({
            "start_time": timestamp(started_at),
            "listener": rt.listener,
            "protocol": "tcp",
            "downstream_remote_address": peer.to_string(),
            "upstream_cluster": rt.config.cluster,
            "upstream_host": upstream.map(|a| a.to_string()),
            "bytes_received": received,
            "bytes_sent": sent,
            "duration_ms": start.elapsed().as_secs_f64() * 1000.0,
            "reason": flag,
        }));
    }
}

impl TcpEnd {
    /// The session as Envoy's `TCPAccessLogEntry` (what `tcp_grpc` sends).
    fn grpc_entry(&self, rt: &TcpRt) -> weft_xds_api::pb::envoy::data::accesslog::v3::TcpAccessLogEntry {
        use weft_telemetry::als;
        use weft_xds_api::pb::envoy::data::accesslog::v3 as data;
        let duration = self.start.elapsed();
        data::TcpAccessLogEntry {
            common_properties: Some(data::AccessLogCommon {
                sample_rate: 1.0,
                downstream_remote_address: Some(als::address(self.peer)),
                downstream_direct_remote_address: Some(als::address(self.peer)),
                downstream_local_address: self.local.map(als::address),
                start_time: Some(als::timestamp(self.started_at)),
                duration: Some(als::duration(duration)),
                upstream_remote_address: self.upstream.map(als::address),
                upstream_cluster: rt.config.cluster.clone(),
                response_flags: als::response_flags(self.reason, self.attempts),
                upstream_request_attempt_count: self.attempts,
                stream_id: als::random_stream_id(),
                access_log_type: data::AccessLogType::TcpConnectionEnd as i32,
                ..Default::default()
            }),
            connection_properties: Some(data::ConnectionProperties {
                received_bytes: self.received,
                sent_bytes: self.sent,
            }),
        }
    }
}

/// Copies both directions until both have ended. EOF on one side is propagated as a write shutdown
/// on the other (half-close), so protocols that "send request, shut down, read reply" work.
/// Returns (bytes downstream→upstream, bytes upstream→downstream).
///
/// A drain lets the session run; when the drain timer is over (`stop`), both sides get a FIN (write
/// shutdown) and the session ends once both have closed their side: a peer sees a clean close,
/// never a reset of bytes it had in flight.
async fn copy_bidirectional(
    down: TcpStream,
    up: TcpStream,
    idle_timeout: Option<Duration>,
    mut drain: tokio::sync::watch::Receiver<bool>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> (u64, u64) {
    use std::os::fd::AsRawFd;
    let fds = [down.as_raw_fd(), up.as_raw_fd()];
    let (dr, dw) = down.into_split();
    let (ur, uw) = up.into_split();
    let last = AtomicU64::new(0);
    let epoch = Instant::now();
    let a = pipe(dr, uw, &last, epoch);
    let b = pipe(ur, dw, &last, epoch);
    tokio::pin!(a, b);
    let (mut a_done, mut b_done) = (None::<u64>, None::<u64>);
    let idle_check = async {
        match idle_timeout {
            None => std::future::pending::<()>().await,
            Some(t) => loop {
                let since = epoch.elapsed().as_millis() as u64 - last.load(Ordering::Relaxed);
                let since = Duration::from_millis(since);
                if since >= t {
                    return;
                }
                tokio::time::sleep(t - since).await;
            },
        }
    };
    tokio::pin!(idle_check);
    let drained = async {
        // A drained listener lets TCP sessions finish on their own, until the drain timer ends.
        let _ = drain.changed().await;
        if stop.wait_for(|s| *s).await.is_err() {
            std::future::pending::<()>().await
        }
    };
    tokio::pin!(drained);
    let mut stopped = false;
    loop {
        tokio::select! {
            r = &mut a, if a_done.is_none() => {
                a_done = Some(r.0);
                if !r.1 && !stopped { break; }
            }
            r = &mut b, if b_done.is_none() => {
                b_done = Some(r.0);
                if !r.1 && !stopped { break; }
            }
            _ = &mut idle_check, if !stopped => break,
            _ = &mut drained, if !stopped => {
                stopped = true;
                for fd in fds {
                    // The halves still own the sockets: the descriptors are open.
                    let _ = nix::sys::socket::shutdown(fd, nix::sys::socket::Shutdown::Write);
                }
            }
        }
        if a_done.is_some() && b_done.is_some() {
            break;
        }
    }
    (a_done.unwrap_or(0), b_done.unwrap_or(0))
}

/// Joins two upgraded connections (a WebSocket tunnel) until both directions have ended. When the
/// drain timer is over (`stop`), both sides get a FIN and what they still send is read and dropped
/// until they close (at most [`TUNNEL_STOP_GRACE`]): a clean close, never a reset.
pub(crate) async fn tunnel<A, B>(mut a: A, mut b: B, stop: Option<tokio::sync::watch::Receiver<bool>>)
where
    A: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    B: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let stopped = async {
        if let Some(mut s) = stop {
            if s.wait_for(|v| *v).await.is_ok() {
                return;
            }
        }
        std::future::pending::<()>().await
    };
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut a, &mut b) => return,
        _ = stopped => {}
    }
    let _ = a.shutdown().await;
    let _ = b.shutdown().await;
    let mut sink = [0u8; 4096];
    let mut sink2 = [0u8; 4096];
    let drain_a = async { while matches!(a.read(&mut sink).await, Ok(n) if n > 0) {} };
    let drain_b = async { while matches!(b.read(&mut sink2).await, Ok(n) if n > 0) {} };
    let _ = tokio::time::timeout(TUNNEL_STOP_GRACE, futures_util::future::join(drain_a, drain_b)).await;
}

/// How long a stopped tunnel waits for both sides to close.
const TUNNEL_STOP_GRACE: Duration = Duration::from_millis(900);

/// One direction: read until EOF (then shut down the writer) or error. Returns (bytes, clean EOF).
async fn pipe(mut r: OwnedReadHalf, mut w: OwnedWriteHalf, last: &AtomicU64, epoch: Instant) -> (u64, bool) {
    let mut buf = vec![0u8; 16 * 1024];
    let mut total = 0u64;
    loop {
        match r.read(&mut buf).await {
            Ok(0) => {
                let _ = w.shutdown().await;
                return (total, true);
            }
            Ok(n) => {
                last.store(epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
                if w.write_all(&buf[..n]).await.is_err() {
                    return (total, false);
                }
                total += n as u64;
            }
            Err(_) => return (total, false),
        }
    }
}
