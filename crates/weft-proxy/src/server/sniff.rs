//! `rpc.protocol: auto` listeners: one peek at a connection's first bytes (with a short timeout)
//! picks the path — Dubbo or Bolt (the RPC proxy, sharing the listener's routes), HTTP/1.x and
//! HTTP/2 (the listener's `http`), TLS (the listener's `tls` + `http` when it terminates TLS, else
//! the fallback), anything else or nothing in time (the listener's `tcp_proxy`, else closed).
//! Only these listeners peek: every other listener's connections go straight to their filter.

use super::{ListenerRt, Server, Shared};
use crate::{http, tcp};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use weft_config::rpc::{RpcProtocol, RpcProxy, Sniff};
use weft_rpc::sniff::{classify, Sniffed, SNIFF_LEN};
use weft_rpc::RpcRt;

pub struct AutoRt {
    listener: String,
    timeout: Duration,
    dubbo: Arc<RpcRt>,
    bolt: Arc<RpcRt>,
    http: Option<Arc<http::HttpRt>>,
    fallback: Option<Arc<tcp::TcpRt>>,
}

impl Server {
    pub(super) fn build_auto(
        &self,
        r: &RpcProxy,
        sniff: &Sniff,
        l: &weft_config::Listener,
        stats: &Arc<crate::stats::ListenerStats>,
    ) -> Result<AutoRt, super::ApplyError> {
        let shared = &self.shared;
        let log = self.open_log(r.access_log.as_ref())?;
        crate::rpc::ensure_admin(shared);
        let tracer = self.tracer_for(r.tracing.as_deref(), &l.name);
        let rpc = |protocol| {
            let mut c = r.clone();
            c.protocol = protocol;
            let rt = RpcRt::new(&c, &l.name, log.clone()).with_tracer(tracer.clone());
            Arc::new(rt.with_istio(self.istio_reporter(l)))
        };
        let http = match &sniff.http {
            None => None,
            Some(h) => {
                let log = self.open_log(h.access_log.as_ref())?;
                let rt = http::HttpRt::new(h, &l.name, stats.clone(), &shared.metrics, log, &shared.jwks);
                let rt = rt.with_istio(self.istio(l));
                let rt = rt.with_grpc_log(self.grpc_log(h.grpc_access_log.as_ref(), weft_telemetry::als::Kind::Http));
                Some(Arc::new(rt.with_tracer(self.tracer_for(h.tracing.as_deref(), &l.name))))
            }
        };
        let fallback = match &sniff.fallback {
            None => None,
            Some(t) => {
                let log = self.open_log(t.access_log.as_ref())?;
                let rt = tcp::TcpRt::new(t, &l.name, stats.clone(), log)
                    .with_grpc_log(self.grpc_log(t.grpc_access_log.as_ref(), weft_telemetry::als::Kind::Tcp))
                    .with_tracer(self.tracer_for(t.tracing.as_deref(), &l.name))
                    .with_authz(&shared.metrics);
                Some(Arc::new(rt))
            }
        };
        Ok(AutoRt {
            listener: l.name.clone(),
            timeout: sniff.timeout,
            dubbo: rpc(RpcProtocol::Dubbo),
            bolt: rpc(RpcProtocol::Bolt),
            http,
            fallback,
        })
    }
}

/// Peeks once (at most `timeout`) and serves the connection on the path its first bytes show.
pub(super) async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
    auto: &AutoRt,
    lrt: Arc<ListenerRt>,
    shared: Arc<Shared>,
) {
    let mut first = [0u8; SNIFF_LEN];
    let found = match tokio::time::timeout(auto.timeout, stream.peek(&mut first)).await {
        // Nothing in time: a server-speaks-first protocol, for the fallback.
        Err(_) => Sniffed::Other,
        Ok(Ok(0)) | Ok(Err(_)) => return,
        Ok(Ok(n)) => classify(&first[..n]),
    };
    let fallback = || auto.fallback.clone();
    let path = match found {
        Sniffed::Http1 | Sniffed::Http2 if auto.http.is_some() => found,
        Sniffed::Tls if auto.http.is_some() && lrt.tls.is_some() => found,
        Sniffed::Dubbo | Sniffed::Bolt => found,
        _ => Sniffed::Other,
    };
    weft_rpc::metrics::global().sniffed(&auto.listener, path.label());
    tracing::trace!(listener = %auto.listener, %peer, ?found, ?path, "sniffed");
    match path {
        Sniffed::Dubbo => {
            weft_rpc::serve_connection(stream, peer, auto.dubbo.clone(), &*shared, lrt.drain_signal()).await
        }
        Sniffed::Bolt => {
            weft_rpc::serve_connection(stream, peer, auto.bolt.clone(), &*shared, lrt.drain_signal()).await
        }
        Sniffed::Http1 | Sniffed::Http2 => {
            let h = auto.http.clone().expect("checked above");
            http::serve_connection(stream, peer, local, h, lrt, shared).await
        }
        Sniffed::Tls => {
            let (h, t) = (
                auto.http.clone().expect("checked above"),
                lrt.tls.clone().expect("checked above"),
            );
            Box::pin(crate::tls::serve_http(stream, peer, h, lrt, shared, t)).await
        }
        Sniffed::Other => match fallback() {
            Some(t) => tcp::serve_connection(stream, peer, t, lrt, &*shared).await,
            None => {
                tracing::debug!(listener = %auto.listener, %peer, "no protocol recognised and no fallback; closing")
            }
        },
    }
}
