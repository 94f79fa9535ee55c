//! The admin HTTP API (HTTP/1.1 and h2c on one port).
//!
//! | path | what |
//! |---|---|
//! | `/ready` | 200 once the registry's first sync is complete, else 503 |
//! | `/metrics` | Prometheus text metrics (`weft_control_*`) |
//! | `/debug/proxies` | connected proxies: node, stream kind, per type ACKed version and last NACK |
//! | `/debug/config/{node_id}` | names and versions of the resources sent to that node |
//! | `/debug/registry` | registry sources, rejected sources with their errors, snapshot generation |
//! | `/debug/ca` | the mesh CA: root rollover phase, since when, when the next step is allowed, roots |
//! | `/endpoints/drains[?epoch=E]` | drained endpoints; whether every proxy has ACKed epoch E |
//! | `POST /endpoints/drain?service=S&address=IP:PORT` | take an endpoint out of rotation ([`crate::drain`]) |
//! | `POST /endpoints/undrain?service=S&address=IP:PORT` | put it back |
//! | `/graph` | the live service graph, a self-contained page ([`crate::graph`]) |
//! | `/graph.json` | its data: workloads, calls with req/s, error rate and p99, drill-down details |
//!
//! Every other endpoint is read-only (GET). A mutating request (any method but
//! GET/HEAD/OPTIONS/TRACE) other than the two above gets 405; any mutating request gets 403 first
//! if it looks cross-site (foreign `Origin` or `Host`, a form / `text/plain` body;
//! [`weft_config::admin`]); either way it is logged with its caller. See docs/security.md.

use crate::registry::RegistryStatus;
use crate::server::Shared;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;
use weft_config::admin::{check_mutating, is_loopback, is_mutating, Caller};

#[derive(Clone)]
pub struct AdminState {
    pub shared: Arc<Shared>,
    pub registry: Arc<Mutex<RegistryStatus>>,
    pub drains: Arc<crate::drain::Drains>,
    pub graph: Arc<crate::graph::Graph>,
    /// The mesh CA, for `/debug/ca` (None: no CA).
    pub ca: Option<Arc<crate::ca::Ca>>,
}

pub async fn serve(listener: tokio::net::TcpListener, state: AdminState, mut shutdown: watch::Receiver<bool>) {
    if let Ok(a) = listener.local_addr() {
        if !is_loopback(a.ip()) {
            tracing::warn!(
                admin = %a,
                "the admin API listens beyond loopback (--admin-allow-non-loopback): it has no authentication, \
                 anyone who can reach {a} can read every proxy's configuration"
            );
        }
    }
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.changed() => return,
        };
        let Ok((stream, peer)) = accepted else {
            // Out of descriptors or similar: back off instead of spinning.
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let Ok(local) = stream.local_addr() else {
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(guarded(&state, req, peer, local)) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn reply(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(body.into()))
        .expect("static response parts are valid")
}

fn json(v: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut s = serde_json::to_string_pretty(v).unwrap_or_default();
    s.push('\n');
    reply(StatusCode::OK, "application/json", s)
}

/// Mutating requests: none is served (405), but cross-site ones get 403, and each is logged with
/// its caller, like on the proxy's admin API.
fn guarded(state: &AdminState, req: Request<Incoming>, peer: SocketAddr, local: SocketAddr) -> Response<Full<Bytes>> {
    if !is_mutating(req.method()) {
        return handle(state, req);
    }
    let caller = Caller::new(peer, req.uri(), req.headers());
    let (method, path) = (req.method(), req.uri().path());
    match check_mutating(req.uri(), req.headers(), local) {
        Err(why) => {
            tracing::warn!(
                %method, %path, peer = %caller.peer, origin = %caller.origin, host = %caller.host,
                user_agent = %caller.user_agent, status = 403, reason = %why,
                "admin: refused a cross-site mutating request"
            );
            reply(StatusCode::FORBIDDEN, "text/plain", why.body())
        }
        Ok(()) if method == Method::POST && matches!(path, "/endpoints/drain" | "/endpoints/undrain") => {
            let (status, body) = drain_call(state, path, req.uri().query().unwrap_or(""));
            tracing::info!(
                %method, %path, query = req.uri().query().unwrap_or(""), peer = %caller.peer,
                user_agent = %caller.user_agent, status = status.as_u16(), "admin: mutating call"
            );
            match body {
                Ok(v) => json(&v),
                Err(msg) => reply(status, "text/plain", format!("{msg}\n")),
            }
        }
        Ok(()) => {
            tracing::info!(
                %method, %path, peer = %caller.peer, origin = %caller.origin, host = %caller.host,
                user_agent = %caller.user_agent, status = 405, result = "use GET",
                "admin: mutating call"
            );
            reply(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "use GET\n")
        }
    }
}

/// `POST /endpoints/drain` and `/endpoints/undrain`.
fn drain_call(state: &AdminState, path: &str, query: &str) -> (StatusCode, Result<serde_json::Value, String>) {
    use crate::drain::{parse_query, DrainError};
    let (service, address, _) = match parse_query(query) {
        Ok(q) => q,
        Err(e) => return (StatusCode::BAD_REQUEST, Err(e.to_string())),
    };
    if path == "/endpoints/undrain" {
        let (epoch, was) = match state.drains.remove(&service, address) {
            Ok(r) => r,
            Err(e) => return (StatusCode::INTERNAL_SERVER_ERROR, Err(e.to_string())),
        };
        return (
            StatusCode::OK,
            Ok(
                serde_json::json!({ "service": service, "address": address.to_string(), "epoch": epoch, "was_drained": was }),
            ),
        );
    }
    match state.drains.add(&state.shared, &service, address) {
        Ok(epoch) => (
            StatusCode::OK,
            Ok(serde_json::json!({ "service": service, "address": address.to_string(), "epoch": epoch })),
        ),
        Err(e @ DrainError::NotSynced) => (StatusCode::SERVICE_UNAVAILABLE, Err(e.to_string())),
        Err(e @ DrainError::Persist(_)) => (StatusCode::INTERNAL_SERVER_ERROR, Err(e.to_string())),
        Err(e) => (StatusCode::NOT_FOUND, Err(e.to_string())),
    }
}

fn handle(state: &AdminState, req: Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET {
        return reply(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "use GET\n");
    }
    let path = req.uri().path();
    match path {
        "/" => reply(
            StatusCode::OK,
            "text/plain",
            "weft control admin\n  GET /ready\n  GET /metrics\n  GET /debug/proxies\n  GET /debug/config/{node_id}\n  GET /debug/registry\n  GET /debug/ca\n  GET /endpoints/drains[?epoch=E]\n  GET /graph\n  GET /graph.json\n  POST /endpoints/drain?service=S&address=IP:PORT\n  POST /endpoints/undrain?service=S&address=IP:PORT\n",
        ),
        "/ready" => {
            if state.shared.snapshots.borrow().is_some() {
                reply(StatusCode::OK, "text/plain", "READY\n")
            } else {
                reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "WAITING FOR REGISTRY SYNC\n")
            }
        }
        "/metrics" | "/stats/prometheus" => reply(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            state.shared.metrics.encode(),
        ),
        "/debug/proxies" => json(&crate::server::proxies_json(&state.shared)),
        "/graph" => Response::builder()
            .status(StatusCode::OK)
            .header("content-type", "text/html; charset=utf-8")
            // Everything is inline; nothing may be loaded from elsewhere.
            .header(
                "content-security-policy",
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:",
            )
            .header("cache-control", "no-store")
            .body(Full::new(Bytes::from_static(crate::graph::page::HTML.as_bytes())))
            .expect("static response parts are valid"),
        "/graph.json" => {
            let mut r = json(&state.graph.json(&state.shared));
            r.headers_mut()
                .insert("cache-control", http::HeaderValue::from_static("no-store"));
            r
        }
        "/endpoints/drains" => {
            let epoch = req
                .uri()
                .query()
                .unwrap_or("")
                .split('&')
                .find_map(|p| p.strip_prefix("epoch="))
                .map(|e| e.parse::<u64>());
            match epoch.transpose() {
                Ok(e) => json(&state.drains.status(&state.shared, e)),
                Err(_) => reply(StatusCode::BAD_REQUEST, "text/plain", "query parameter `epoch`: not a number\n"),
            }
        }
        "/debug/ca" => match &state.ca {
            Some(ca) => json(&crate::ca::rollover::status_json(ca)),
            None => reply(StatusCode::NOT_FOUND, "text/plain", "no mesh CA (--ca-dir or --ca-store)\n"),
        },
        "/debug/registry" => {
            let st = state.registry.lock().unwrap_or_else(|p| p.into_inner()).clone();
            json(&serde_json::to_value(&st).unwrap_or_default())
        }
        p if p.starts_with("/debug/config/") => {
            let node = &p["/debug/config/".len()..];
            match crate::server::config_json(&state.shared, node) {
                Some(v) => json(&v),
                None => reply(StatusCode::NOT_FOUND, "text/plain", format!("no proxy with node id \"{node}\"\n")),
            }
        }
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found; GET / lists the endpoints\n"),
    }
}
