//! `weft proxy` in-process: started from a YAML string, its admin endpoint and counters.

use crate::client::{get, metric, req, Got, H1Client};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use weft_proxy::{Server, ServerOptions};

/// Starts a proxy from YAML (listeners and admin should use port 0; read the bound addresses with
/// `server.listener_addr(name)` and `server.admin_addr()`). Panics with the validation error and
/// the YAML if the config is invalid.
pub fn start_proxy(yaml: &str) -> Arc<Server> {
    let config = weft_config::from_yaml(yaml).unwrap_or_else(|e| panic!("test config invalid:\n{e}\n{yaml}"));
    Server::start(config, ServerOptions { config_path: None }).expect("proxy starts")
}

/// The admin address; panics if the config has no `admin:` section.
pub fn admin_addr(server: &Server) -> SocketAddr {
    server.admin_addr().expect("admin configured")
}

/// Fetches an admin endpoint.
pub async fn admin(server: &Server, path: &str) -> Got {
    get(admin_addr(server), path).await
}

/// POSTs (empty body) to an admin endpoint.
pub async fn admin_post(server: &Server, path: &str) -> Got {
    let addr = admin_addr(server);
    H1Client::connect(addr)
        .await
        .send(req("POST", path, &addr.to_string(), &[], ""))
        .await
}

/// The admin's metrics scrape (`/stats/prometheus`).
pub async fn stats(server: &Server) -> String {
    admin(server, "/stats/prometheus").await.text()
}

/// The current value of one sample from `/stats/prometheus`, e.g.
/// `weft_downstream_rq_local_total{listener="web",reason="DC"}`; None if absent.
pub async fn stat(server: &Server, sample: &str) -> Option<f64> {
    metric(&stats(server).await, sample)
}

/// Waits (at most `wait`) until the sample satisfies `ok` (an absent sample counts as 0); returns
/// its value. Panics naming the sample and its last value otherwise. This is how a test waits for
/// the proxy to have done something, instead of sleeping.
pub async fn wait_stat(server: &Server, sample: &str, wait: Duration, ok: impl Fn(f64) -> bool) -> f64 {
    crate::wait::eventually_ok(sample, wait, || async {
        let v = stat(server, sample).await.unwrap_or(0.0);
        if ok(v) {
            Ok(v)
        } else {
            Err(v)
        }
    })
    .await
}

/// Polls the admin metrics (at most `wait`) until the sample `prefix` satisfies `ok`; returns the
/// last value seen (None if the sample never appeared). For tests that assert themselves.
pub async fn metric_eventually(server: &Server, prefix: &str, wait: Duration, ok: impl Fn(f64) -> bool) -> Option<f64> {
    let deadline = std::time::Instant::now() + wait;
    loop {
        let v = stat(server, prefix).await;
        if v.is_some_and(&ok) || std::time::Instant::now() >= deadline {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A proxy config with an admin port, one worker, one listener `web` on port 0 whose single route
/// (`/`) has the given `route:` action, and the given `clusters:` list (YAML, indented two spaces).
pub fn one_route_yaml(route: &str, clusters: &str) -> String {
    format!(
        r#"
admin: {{ address: "127.0.0.1:0" }}
runtime: {{ concurrency: 1 }}
listeners:
  - name: web
    address: 127.0.0.1:0
    http:
      route_config:
        virtual_hosts:
          - name: all
            domains: ["*"]
            routes:
              - match: {{ prefix: / }}
                route: {route}
clusters:
{clusters}
"#
    )
}

/// [`one_route_yaml`] routing everything to one cluster `app` with a single endpoint `upstream`;
/// `http_extra` (e.g. `"stream_idle_timeout: 1s"`) goes into the listener's `http` section.
pub fn app_yaml(upstream: SocketAddr, http_extra: &str) -> String {
    let yaml = one_route_yaml(
        "{ cluster: app }",
        &format!("  - name: app\n    endpoints: [{{ address: \"{upstream}\" }}]"),
    );
    if http_extra.is_empty() {
        yaml
    } else {
        yaml.replace("    http:\n", &format!("    http:\n      {http_extra}\n"))
    }
}
