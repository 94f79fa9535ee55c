//! The admin API, on its own port and thread so that a busy data plane never starves it.
//!
//! | method | path | what |
//! |---|---|---|
//! | GET | `/ready` | 200 once configured and not draining, else 503 |
//! | GET | `/stats/prometheus` | Prometheus text metrics |
//! | GET | `/config_dump` | the running configuration as JSON |
//! | GET | `/clusters` | endpoints with health and per-endpoint counters, as JSON |
//! | GET | `/listeners` | listener names and bound addresses, as JSON |
//! | GET | `/xds` | xDS client state (per type: version, nonce, last NACK; connection), as JSON |
//! | POST | `/reload` | re-read the configuration file; 400 with the errors if refused |
//! | POST | `/drain` | stop accepting and close connections gracefully |
//! | POST | `/quitquitquit` | drain, then exit (as SIGTERM): for Jobs whose app has finished |
//! | POST | `/explain` | what the proxy would do with a request (JSON in and out; no side effects) |
//!
//! Mutating requests (any method but GET/HEAD/OPTIONS/TRACE) that look cross-site — a foreign
//! `Origin` or `Host`, or a form / `text/plain` body — are answered 403 ([`weft_config::admin`]),
//! and every mutating call is logged with its caller and result. See docs/security.md.

use crate::server::Server;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Weak;
use weft_config::admin::{check_mutating, is_loopback, is_mutating, Caller};

pub async fn serve(listener: std::net::TcpListener, server: Weak<Server>) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "admin listener");
            return;
        }
    };
    if let Ok(a) = listener.local_addr() {
        if !is_loopback(a.ip()) {
            tracing::warn!(
                admin = %a,
                "the admin API listens beyond loopback (admin.allow_non_loopback): it has no authentication, \
                 anyone who can reach {a} can read the configuration and reload or drain this proxy"
            );
        }
    }
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            continue;
        };
        let Ok(local) = stream.local_addr() else {
            continue;
        };
        let server = server.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let server = server.clone();
                async move { Ok::<_, Infallible>(guarded(server, req, peer, local).await) }
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

/// Mutating requests pass the cross-site checks first, and are logged with their caller and result.
async fn guarded(
    server: Weak<Server>,
    req: Request<Incoming>,
    peer: SocketAddr,
    local: SocketAddr,
) -> Response<Full<Bytes>> {
    if !is_mutating(req.method()) {
        return handle(server, req).await;
    }
    let caller = Caller::new(peer, req.uri(), req.headers());
    let (method, path) = (req.method().clone(), req.uri().path().to_string());
    if let Err(why) = check_mutating(req.uri(), req.headers(), local) {
        tracing::warn!(
            %method, %path, peer = %caller.peer, origin = %caller.origin, host = %caller.host,
            user_agent = %caller.user_agent, status = 403, reason = %why,
            "admin: refused a cross-site mutating request"
        );
        return reply(StatusCode::FORBIDDEN, "text/plain", why.body());
    }
    let resp = handle(server, req).await;
    // Admin answers are small and already whole: read the body back for the log line.
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let result = String::from_utf8_lossy(&body).trim_end().replace('\n', " | ");
    tracing::info!(
        %method, %path, peer = %caller.peer, origin = %caller.origin, host = %caller.host,
        user_agent = %caller.user_agent, status = parts.status.as_u16(), %result, "admin: mutating call"
    );
    Response::from_parts(parts, Full::new(body))
}

async fn handle(server: Weak<Server>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let Some(server) = server.upgrade() else {
        return reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "shutting down\n");
    };
    let shared = &server.shared;
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/") => reply(
            StatusCode::OK,
            "text/plain",
            format!(
                "weft admin\n{}  GET  /ready\n  GET  /stats/prometheus\n  GET  /config_dump\n  GET  /clusters\n  GET  /listeners\n  GET  /xds\n  POST /reload\n  POST /explain\n  POST /drain\n  POST /quitquitquit\n",
                identity_line(shared)
            ),
        ),
        (&Method::GET, "/ready") => {
            if shared.draining.load(Ordering::Relaxed) {
                reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "DRAINING\n")
            } else if shared.snapshot.load().generation == 0 || shared.xds_initializing.load(Ordering::SeqCst) {
                reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "INITIALIZING\n")
            } else {
                reply(StatusCode::OK, "text/plain", "LIVE\n")
            }
        }
        (&Method::GET, "/stats/prometheus") | (&Method::GET, "/metrics") => reply(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            prometheus_text(shared),
        ),
        (&Method::GET, "/xds") => {
            let exts = shared.admin_extensions.lock().clone();
            match exts.iter().find(|e| e.name() == "xds") {
                Some(e) => json(&e.status_json()),
                None => reply(StatusCode::NOT_FOUND, "text/plain", "no xds section in the configuration\n"),
            }
        }
        (&Method::GET, "/config_dump") => {
            let snap = shared.snapshot.load();
            let status = shared.last_reload.lock().clone();
            let mut dump = serde_json::json!({
                "generation": snap.generation,
                "config_path": shared.config_path.as_ref().map(|p| p.display().to_string()),
                "last_reload_error": status.last_error,
                "config": &*snap.config,
            });
            for e in shared.admin_extensions.lock().clone() {
                dump[e.name()] = e.status_json();
            }
            json(&dump)
        }
        (&Method::GET, "/clusters") => {
            let snap = shared.snapshot.load();
            let mut names: Vec<_> = snap.clusters.keys().cloned().collect();
            names.sort();
            let clusters: Vec<_> = names
                .iter()
                .map(|n| {
                    let c = &snap.clusters[n];
                    let set = c.hosts.load();
                    let hosts: Vec<_> = set
                        .hosts
                        .iter()
                        .map(|h| {
                            serde_json::json!({
                                "address": h.address.to_string(),
                                "weight": h.weight,
                                "healthy": h.healthy.load(Ordering::Relaxed),
                                "ejected": h.outlier.ejected.load(Ordering::Relaxed),
                                "eligible": crate::hostset::is_eligible(h),
                                "outlier_ejections": h.outlier.ejections.load(Ordering::Relaxed),
                                "health_checks": { "passed": h.hc.checks_ok.load(Ordering::Relaxed), "failed": h.hc.checks_failed.load(Ordering::Relaxed) },
                                "priority": h.priority,
                                "labels": h.labels,
                                "locality": { "region": h.locality.region, "zone": h.locality.zone, "sub_zone": h.locality.sub_zone },
                                "active_requests": h.active_rq.load(Ordering::Relaxed),
                                "requests": h.rq_total.load(Ordering::Relaxed),
                                "errors": h.rq_error.load(Ordering::Relaxed),
                                "connect_failures": h.cx_connect_fail.load(Ordering::Relaxed),
                                "tls": c.config.tls_of(h.tls_choice).map(|t| t.mode),
                                "tls_match": h.tls_choice.checked_sub(1).and_then(|i| c.config.tls_matches.get(i)).map(|m| m.name.as_str()),
                            })
                        })
                        .collect();
                    serde_json::json!({
                        "name": n,
                        "lb_policy": c.config.lb_policy,
                        "protocol": c.config.protocol,
                        "active_requests": c.active_requests(),
                        "active_connections": c.connections(),
                        "eligible_hosts": set.eligible,
                        "panic": set.panic,
                        "hosts": hosts,
                    })
                })
                .collect();
            json(&serde_json::json!({ "clusters": clusters }))
        }
        (&Method::GET, "/listeners") => {
            let l: Vec<_> = server
                .listener_addrs()
                .into_iter()
                .map(|(n, a)| serde_json::json!({ "name": n, "address": a.to_string() }))
                .collect();
            json(&serde_json::json!({ "listeners": l }))
        }
        (&Method::POST, "/reload") => {
            let s = server.clone();
            // Reload binds sockets and may block briefly; keep it off the admin event loop.
            match tokio::task::spawn_blocking(move || s.reload()).await {
                Ok(Ok(msg)) => reply(StatusCode::OK, "text/plain", format!("reloaded: {msg}\n")),
                Ok(Err(e)) => reply(
                    StatusCode::BAD_REQUEST,
                    "text/plain",
                    format!("reload refused, still serving the previous configuration:\n{e}\n"),
                ),
                Err(_) => reply(StatusCode::INTERNAL_SERVER_ERROR, "text/plain", "reload failed\n"),
            }
        }
        (&Method::POST, "/explain") => {
            let body = http_body_util::Limited::new(req.into_body(), 64 * 1024).collect().await;
            let Ok(body) = body.map(|b| b.to_bytes()) else {
                return reply(StatusCode::BAD_REQUEST, "text/plain", "body unreadable or over 64 KiB\n");
            };
            match crate::explain::ExplainRequest::from_json(&body) {
                Ok(r) => json(&crate::explain::explain(&server, &r).await),
                Err(e) => reply(StatusCode::BAD_REQUEST, "text/plain", format!("{}\n", e.0)),
            }
        }
        (&Method::POST, "/drain") => {
            server.start_drain();
            reply(StatusCode::OK, "text/plain", "draining\n")
        }
        (&Method::POST, "/quitquitquit") => {
            server.start_drain();
            let exits = server.has_quit_hook();
            // The exit (SIGTERM to ourselves) goes after this answer is written: with nothing to
            // drain the process may exit at once, and the caller would read a closed connection.
            let s = server.clone();
            tokio::spawn(async move {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                s.quit();
            });
            reply(
                StatusCode::OK,
                "text/plain",
                if exits { "draining, then exiting\n" } else { "draining\n" },
            )
        }
        (_, "/reload") | (_, "/drain") | (_, "/quitquitquit") => reply(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "use POST\n"),
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found; GET / lists the endpoints\n"),
    }
}

/// The `/stats/prometheus` exposition: every registry, the admin extensions' metrics, and the
/// counter totals carried over a hot restart ([`crate::carry`]).
pub fn prometheus_text(shared: &crate::server::Shared) -> String {
    let mut text = shared.metrics.encode();
    let exts = shared.admin_extensions.lock().clone();
    if !exts.is_empty() {
        // OpenMetrics ends with "# EOF"; extension metrics go before it.
        let tail = text.rfind("# EOF").unwrap_or(text.len());
        let mut extra = String::new();
        for e in &exts {
            extra.push_str(&e.prometheus());
        }
        text.insert_str(tail, &extra);
    }
    crate::carry::apply(text)
}

/// The admin page's line about the mesh identity: the SPIFFE ID this proxy presents in mesh mTLS
/// and when its certificate expires.
fn identity_line(shared: &crate::server::Shared) -> String {
    match shared.tls.mesh.current() {
        Some(m) => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            format!(
                "  identity {} (certificate expires in {}s)\n\n",
                m.id,
                m.not_after.saturating_sub(now)
            )
        }
        None => "  identity none (no mesh certificate: mesh mTLS is off)\n\n".to_string(),
    }
}
