//! Active health checks: HTTP (path and expected statuses), TCP connect, and the gRPC health
//! protocol (`grpc.health.v1.Health/Check`). Each cluster's checks run on the control thread;
//! a host turns unhealthy after `unhealthy_threshold` consecutive failures and healthy again after
//! `healthy_threshold` consecutive successes. Hosts start healthy.

use crate::cluster::{ClusterRt, Host};
use bytes::{Buf, Bytes};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::net::TcpStream;
use weft_config::{HealthCheck, HealthCheckKind};

/// Per-host health-check state.
#[derive(Default)]
pub struct HealthState {
    consecutive_ok: AtomicU32,
    consecutive_fail: AtomicU32,
    pub checks_ok: AtomicU64,
    pub checks_failed: AtomicU64,
}

/// Runs every health check of a cluster until the cluster is gone.
pub async fn run(cluster: Weak<ClusterRt>, index: usize) {
    loop {
        let Some(c) = cluster.upgrade() else { return };
        let Some(hc) = c.config.health_checks.get(index).cloned() else {
            return;
        };
        let hosts = c.hosts.load().hosts.clone();
        let checks = hosts.iter().map(|h| check_and_record(&c, h, &hc));
        futures_util::future::join_all(checks).await;
        drop(c);
        let jitter = if hc.interval_jitter.is_zero() {
            Duration::ZERO
        } else {
            Duration::from_micros(fastrand::u64(0..=hc.interval_jitter.as_micros() as u64))
        };
        tokio::time::sleep(hc.interval + jitter).await;
    }
}

async fn check_and_record(cluster: &ClusterRt, host: &Arc<Host>, hc: &HealthCheck) {
    let ok = matches!(
        tokio::time::timeout(hc.timeout, check(cluster, host, hc)).await,
        Ok(Ok(true))
    );
    let st = &host.hc;
    if ok {
        st.checks_ok.fetch_add(1, Ordering::Relaxed);
        cluster.stats.hc_success.inc();
        st.consecutive_fail.store(0, Ordering::Relaxed);
        let n = st.consecutive_ok.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= hc.healthy_threshold && !host.healthy.swap(true, Ordering::Relaxed) {
            tracing::info!(cluster = %cluster.config.name, host = %host.address, "health check: healthy");
            cluster.rebuild_hosts();
        }
    } else {
        st.checks_failed.fetch_add(1, Ordering::Relaxed);
        cluster.stats.hc_failure.inc();
        st.consecutive_ok.store(0, Ordering::Relaxed);
        let n = st.consecutive_fail.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= hc.unhealthy_threshold && host.healthy.swap(false, Ordering::Relaxed) {
            tracing::warn!(cluster = %cluster.config.name, host = %host.address, "health check: unhealthy");
            cluster.rebuild_hosts();
        }
    }
}

async fn check(
    cluster: &ClusterRt,
    host: &Host,
    hc: &HealthCheck,
) -> Result<bool, Box<dyn std::error::Error + Send + Sync>> {
    let stream = TcpStream::connect(host.address).await?;
    let _ = stream.set_nodelay(true);
    match &hc.kind {
        HealthCheckKind::Tcp => Ok(true),
        HealthCheckKind::Http {
            path,
            host: host_header,
            expected_statuses,
        } => {
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(conn);
            let req = http::Request::get(path.as_str())
                .header("host", host_header.as_deref().unwrap_or(&cluster.config.name))
                .header("user-agent", "weft-health-check")
                .header("connection", "close")
                .body(Empty::<Bytes>::new())?;
            let resp = sender.send_request(req).await?;
            let status = resp.status().as_u16();
            let _ = resp.into_body().collect().await;
            Ok(expected_statuses.iter().any(|(lo, hi)| (*lo..=*hi).contains(&status)))
        }
        HealthCheckKind::Grpc {
            service_name,
            authority,
        } => {
            let (mut sender, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await?;
            tokio::spawn(conn);
            let authority = authority.clone().unwrap_or_else(|| cluster.config.name.clone());
            let req = http::Request::post(format!("http://{authority}/grpc.health.v1.Health/Check"))
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .header("user-agent", "weft-health-check")
                .body(Full::new(grpc_health_request(service_name)))?;
            let resp = sender.send_request(req).await?;
            if resp.status() != http::StatusCode::OK {
                return Ok(false);
            }
            // Trailers-only responses carry grpc-status in the headers.
            if let Some(s) = resp.headers().get("grpc-status") {
                if s != "0" {
                    return Ok(false);
                }
            }
            let collected = resp.into_body().collect().await?;
            if let Some(t) = collected.trailers() {
                if t.get("grpc-status").is_some_and(|s| s != "0") {
                    return Ok(false);
                }
            }
            Ok(grpc_health_serving(collected.to_bytes()))
        }
    }
}

/// `HealthCheckRequest { string service = 1; }` in a gRPC frame. Hand-encoded: a one-field message
/// does not justify protobuf code generation.
fn grpc_health_request(service: &str) -> Bytes {
    let mut msg = Vec::with_capacity(service.len() + 3);
    if !service.is_empty() {
        msg.push(0x0a);
        let mut n = service.len();
        while n >= 0x80 {
            msg.push((n as u8) | 0x80);
            n >>= 7;
        }
        msg.push(n as u8);
        msg.extend_from_slice(service.as_bytes());
    }
    let mut frame = Vec::with_capacity(5 + msg.len());
    frame.push(0);
    frame.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    frame.extend_from_slice(&msg);
    Bytes::from(frame)
}

/// True when the reply holds `HealthCheckResponse { status: SERVING (1) }`.
fn grpc_health_serving(mut body: Bytes) -> bool {
    if body.len() < 5 || body[0] != 0 {
        return false;
    }
    body.advance(1);
    let len = body.get_u32() as usize;
    if body.len() < len {
        return false;
    }
    let msg = &body[..len];
    // Scan top-level fields for field 1 (varint).
    let mut i = 0;
    while i < msg.len() {
        let key = msg[i];
        i += 1;
        let (field, wire) = (key >> 3, key & 7);
        match wire {
            0 => {
                let mut v: u64 = 0;
                let mut shift = 0;
                while i < msg.len() {
                    let b = msg[i];
                    i += 1;
                    v |= u64::from(b & 0x7f) << shift;
                    shift += 7;
                    if b & 0x80 == 0 || shift > 63 {
                        break;
                    }
                }
                if field == 1 {
                    return v == 1;
                }
            }
            2 => {
                let Some(&l) = msg.get(i) else { return false };
                i += 1 + l as usize;
            }
            _ => return false,
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_health_codec() {
        assert_eq!(&grpc_health_request("")[..], &[0, 0, 0, 0, 0]);
        assert_eq!(
            &grpc_health_request("svc")[..],
            &[0, 0, 0, 0, 5, 0x0a, 3, b's', b'v', b'c']
        );
        assert!(grpc_health_serving(Bytes::from_static(&[0, 0, 0, 0, 2, 0x08, 1])));
        assert!(!grpc_health_serving(Bytes::from_static(&[0, 0, 0, 0, 2, 0x08, 2])));
        assert!(!grpc_health_serving(Bytes::from_static(&[0, 0, 0, 0, 0])));
        assert!(!grpc_health_serving(Bytes::from_static(&[0, 0, 0, 0, 9, 0x08])));
        assert!(!grpc_health_serving(Bytes::from_static(&[1])));
    }
}
