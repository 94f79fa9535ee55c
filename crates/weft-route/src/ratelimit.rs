//! Global rate limiting: asks a rate limit service speaking Envoy's RLS protocol
//! (`envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`) whether a request may pass.
//!
//! The call is a plain gRPC unary request over a hyper HTTP/2 connection to one of the service
//! cluster's hosts, kept open and shared by every worker (HTTP/2 multiplexes). The message types
//! come from the Envoy API crate; a slow or failed service costs at most the configured timeout and
//! then fails open, or closed with `failure_mode_deny`.

use bytes::{BufMut, Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use weft_config::{RateLimitAction, RateLimitPolicy, RateLimitService};
use weft_core::shard::Counter;
use weft_upstream::ClusterLookup;
pub use weft_xds_api::pb::envoy::extensions::common::ratelimit::v3::{
    rate_limit_descriptor::Entry, RateLimitDescriptor,
};
use weft_xds_api::pb::envoy::service::ratelimit::v3::{rate_limit_response::Code, RateLimitRequest, RateLimitResponse};
use weft_xds_api::prost::Message;

/// What the rate limit service decided.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    OverLimit,
    /// The service failed, timed out or could not be reached.
    Error(String),
}

pub struct RateLimitClient {
    config: RateLimitService,
    path: http::Uri,
    conns: Mutex<HashMap<SocketAddr, SendRequest<Full<Bytes>>>>,
    pub over_limit: Counter,
    pub errors: Counter,
}

/// The descriptors a request yields under a route's `rate_limits` (a policy whose action cannot
/// produce an entry, such as a missing header, is skipped, as in Envoy).
pub fn descriptors(policies: &[RateLimitPolicy], headers: &http::HeaderMap, peer: IpAddr) -> Vec<RateLimitDescriptor> {
    descriptors_with(
        policies,
        |name| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string),
        peer,
    )
}

/// [`descriptors`] with the values of `request_headers` actions from `value` (an RPC call reads
/// its attachments there).
pub fn descriptors_with(
    policies: &[RateLimitPolicy],
    value: impl Fn(&str) -> Option<String>,
    peer: IpAddr,
) -> Vec<RateLimitDescriptor> {
    let mut out = Vec::new();
    'policy: for p in policies {
        let mut entries = Vec::with_capacity(p.actions.len());
        for a in &p.actions {
            let (key, value) = match a {
                RateLimitAction::RequestHeaders {
                    header_name,
                    descriptor_key,
                } => match value(header_name) {
                    Some(v) => (descriptor_key.clone(), v),
                    None => continue 'policy,
                },
                RateLimitAction::RemoteAddress => ("remote_address".to_string(), peer.to_string()),
                RateLimitAction::GenericKey {
                    descriptor_key,
                    descriptor_value,
                } => (descriptor_key.clone(), descriptor_value.clone()),
            };
            entries.push(Entry { key, value });
        }
        out.push(RateLimitDescriptor {
            entries,
            ..Default::default()
        });
    }
    out
}

impl RateLimitClient {
    pub fn new(config: &RateLimitService, over_limit: Counter, errors: Counter) -> RateLimitClient {
        RateLimitClient {
            path: http::Uri::from_static("/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit"),
            config: config.clone(),
            conns: Mutex::new(HashMap::new()),
            over_limit,
            errors,
        }
    }

    /// The rate limit service's cluster.
    pub fn cluster(&self) -> &str {
        &self.config.cluster
    }

    pub fn failure_mode_deny(&self) -> bool {
        self.config.failure_mode_deny
    }

    /// Asks the service about `descriptors`, within the configured timeout.
    pub async fn check(&self, clusters: &dyn ClusterLookup, descriptors: Vec<RateLimitDescriptor>) -> Verdict {
        let verdict = match tokio::time::timeout(self.config.timeout, self.call(clusters, descriptors)).await {
            Ok(Ok(code)) if code == Code::OverLimit as i32 => Verdict::OverLimit,
            Ok(Ok(_)) => Verdict::Allow,
            Ok(Err(e)) => Verdict::Error(e),
            Err(_) => Verdict::Error(format!("no answer within {:?}", self.config.timeout)),
        };
        match &verdict {
            Verdict::OverLimit => {
                self.over_limit.inc();
            }
            Verdict::Error(e) => {
                self.errors.inc();
                tracing::debug!(cluster = %self.config.cluster, error = %e, "rate limit service call failed");
            }
            Verdict::Allow => {}
        };
        verdict
    }

    async fn call(&self, clusters: &dyn ClusterLookup, descriptors: Vec<RateLimitDescriptor>) -> Result<i32, String> {
        let host = clusters
            .cluster(&self.config.cluster)
            .ok_or_else(|| format!("no cluster \"{}\"", self.config.cluster))?
            .any_host_address()
            .ok_or_else(|| format!("cluster \"{}\" has no hosts", self.config.cluster))?;
        let mut sender = self.sender(host).await?;
        let msg = RateLimitRequest {
            domain: self.config.domain.clone(),
            descriptors,
            hits_addend: 1,
        };
        let mut frame = BytesMut::with_capacity(5 + msg.encoded_len());
        frame.put_u8(0);
        frame.put_u32(msg.encoded_len() as u32);
        msg.encode(&mut frame).map_err(|e| e.to_string())?;
        let req = http::Request::post(self.path.clone())
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .header("user-agent", "weft")
            .body(Full::new(frame.freeze()))
            .map_err(|e| e.to_string())?;
        let resp = match sender.send_request(req).await {
            Ok(r) => r,
            Err(e) => {
                self.conns.lock().remove(&host);
                return Err(format!("{host}: {e}"));
            }
        };
        if resp.status() != http::StatusCode::OK {
            return Err(format!("{host}: HTTP status {}", resp.status()));
        }
        let grpc_error = |h: &http::HeaderMap| {
            h.get("grpc-status")
                .filter(|s| *s != "0")
                .map(|s| format!("{host}: grpc-status {}", s.to_str().unwrap_or("?")))
        };
        if let Some(e) = grpc_error(resp.headers()) {
            return Err(e);
        }
        let collected = resp.into_body().collect().await.map_err(|e| format!("{host}: {e}"))?;
        if let Some(e) = collected.trailers().and_then(grpc_error) {
            return Err(e);
        }
        let body = collected.to_bytes();
        if body.len() < 5 || body[0] != 0 {
            return Err(format!("{host}: malformed gRPC response"));
        }
        let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
        let msg = body
            .get(5..5 + len)
            .ok_or_else(|| format!("{host}: truncated gRPC response"))?;
        let resp = RateLimitResponse::decode(msg).map_err(|e| format!("{host}: {e}"))?;
        Ok(resp.overall_code)
    }

    async fn sender(&self, host: SocketAddr) -> Result<SendRequest<Full<Bytes>>, String> {
        if let Some(s) = self.conns.lock().get(&host) {
            if !s.is_closed() {
                return Ok(s.clone());
            }
        }
        let stream = tokio::net::TcpStream::connect(host)
            .await
            .map_err(|e| format!("{host}: {e}"))?;
        let _ = stream.set_nodelay(true);
        let (sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .map_err(|e| format!("{host}: {e}"))?;
        tokio::spawn(conn);
        self.conns.lock().insert(host, sender.clone());
        Ok(sender)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptors_follow_envoy_rules() {
        let policies = vec![
            RateLimitPolicy {
                actions: vec![
                    RateLimitAction::GenericKey {
                        descriptor_key: "generic_key".into(),
                        descriptor_value: "api".into(),
                    },
                    RateLimitAction::RequestHeaders {
                        header_name: "x-user".into(),
                        descriptor_key: "user".into(),
                    },
                ],
            },
            RateLimitPolicy {
                actions: vec![RateLimitAction::RemoteAddress],
            },
        ];
        let mut h = http::HeaderMap::new();
        let ip: IpAddr = "127.0.0.9".parse().unwrap();
        // Without the header the first descriptor is skipped; the second stays.
        let d = descriptors(&policies, &h, ip);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].entries[0].key, "remote_address");
        assert_eq!(d[0].entries[0].value, "127.0.0.9");
        h.insert("x-user", "alice".parse().unwrap());
        let d = descriptors(&policies, &h, ip);
        assert_eq!(d.len(), 2);
        let e: Vec<_> = d[0]
            .entries
            .iter()
            .map(|e| (e.key.as_str(), e.value.as_str()))
            .collect();
        assert_eq!(e, [("generic_key", "api"), ("user", "alice")]);
    }
}
